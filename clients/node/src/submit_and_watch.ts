// Submit one task to a Corral coordinator, watch it until it ends, print the final task as JSON.
//
//   node dist/src/submit_and_watch.js HOST:PORT [TYPE] [INPUT_JSON]
//   node dist/src/submit_and_watch.js localhost:7070 echo '{"from":"node"}'
//
// The stubs come from proto/ (scripts/gen.mjs: protoc + protoc-gen-es); the transport is Connect's
// gRPC protocol over HTTP/2 (plaintext), i.e. plain gRPC, as grpcurl and the Python clients speak it.
// Output: the task in the canonical proto3 JSON mapping (lowerCamelCase names, enum names, the
// output as plain JSON), like `corral get`. Exit code 0 when the task SUCCEEDED, 3 when it ended
// otherwise, 1 on a gRPC error (printed as `error: CODE: message`), 2 on bad arguments.
import { fromJson, toJsonString, type JsonValue } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { TaskSchema, TaskSpecSchema, TaskState, type Task } from "../gen/corral/v1/task_pb.js";
import { TaskService } from "../gen/corral/v1/task_service_pb.js";

const TERMINAL: ReadonlySet<TaskState> = new Set([TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELED]);
const CALL_TIMEOUT_MS = 10_000;
const WATCH_TIMEOUT_MS = Number(process.env.CORRAL_WATCH_TIMEOUT_MS ?? 120_000);

function usage(message: string): never {
  console.error(`error: ${message}\nusage: submit_and_watch HOST:PORT [TYPE] [INPUT_JSON]`);
  process.exit(2);
}

async function main(argv: string[]): Promise<number> {
  const [target, type = "echo", inputText = '{"from":"node"}'] = argv;
  if (!target || !/^[^/]+:\d+$/.test(target)) usage("the first argument must be HOST:PORT");
  let input: JsonValue;
  try {
    input = JSON.parse(inputText) as JsonValue;
  } catch (err) {
    usage(`INPUT_JSON is not JSON: ${(err as Error).message}`);
  }

  const transport = createGrpcTransport({ baseUrl: `http://${target}` });
  const tasks = createClient(TaskService, transport);

  // The spec from its JSON form: `input` is a google.protobuf.Value, so any JSON goes in as is.
  const task = fromJson(TaskSpecSchema, { type, input });
  const submitted = await tasks.submitTask({ task }, { timeoutMs: CALL_TIMEOUT_MS });
  console.error(`submitted ${submitted.taskId} (created: ${submitted.created})`);

  // WatchTask sends the task now, then each committed change, and ends once it is terminal.
  let last: Task | undefined;
  for await (const update of tasks.watchTask({ taskId: submitted.taskId }, { timeoutMs: WATCH_TIMEOUT_MS })) {
    if (!update.task) continue;
    last = update.task;
    console.error(`  ${TaskState[last.state]}`);
    if (TERMINAL.has(last.state)) break;
  }
  if (!last || !TERMINAL.has(last.state)) {
    throw new ConnectError(`the watch of ${submitted.taskId} ended before the task did`, Code.Unknown);
  }
  console.log(toJsonString(TaskSchema, last, { prettySpaces: 2 }));
  return last.state === TaskState.SUCCEEDED ? 0 : 3;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    const e = ConnectError.from(err);
    console.error(`error: ${Code[e.code]}: ${e.rawMessage}`);
    process.exit(1);
  },
);
