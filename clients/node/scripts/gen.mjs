// Generates TypeScript from ../../proto/corral/v1/*.proto into gen/ (or the folder given as the
// first argument), with protoc from the Python package grpcio-tools (the repository's pinned
// compiler, `python -m grpc_tools.protoc`) and the pure-JS plugin protoc-gen-es from node_modules.
// The generated code is not committed: `npm run gen` (or `make client-node`) makes it.
//
// PYTHON: the interpreter that has grpcio-tools (default: the repository's .venv, else python3).
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const clientDir = resolve(here, "..");
const repoRoot = resolve(clientDir, "..", "..");
const protoRoot = join(repoRoot, "proto");
const outDir = resolve(process.argv[2] ?? join(clientDir, "gen"));
const venvPython = join(repoRoot, ".venv", "bin", "python");
const python = process.env.PYTHON || (existsSync(venvPython) ? venvPython : "python3");
const plugin = join(clientDir, "node_modules", ".bin", process.platform === "win32" ? "protoc-gen-es.cmd" : "protoc-gen-es");

function fail(message) {
  console.error(`gen: ${message}`);
  process.exit(1);
}

if (!existsSync(plugin)) fail(`${plugin} is missing: run \`npm ci\` in ${clientDir} first`);

// Well-known types (google/protobuf/*.proto) ship inside grpc_tools, in its _proto folder.
const wkt = spawnSync(python, ["-c", "import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), '_proto'))"],
  { encoding: "utf8" });
if (wkt.status !== 0) fail(`${python} cannot import grpc_tools (pip install grpcio-tools): ${wkt.stderr || wkt.error}`);
const wktInclude = wkt.stdout.trim();

const protos = readdirSync(join(protoRoot, "corral", "v1"))
  .filter((name) => name.endsWith(".proto"))
  .sort()
  .map((name) => `corral/v1/${name}`);
if (protos.length === 0) fail(`no .proto files in ${join(protoRoot, "corral", "v1")}`);

rmSync(outDir, { recursive: true, force: true });
mkdirSync(outDir, { recursive: true });
const args = [
  "-m", "grpc_tools.protoc",
  `-I${protoRoot}`, `-I${wktInclude}`,
  `--plugin=protoc-gen-es=${plugin}`,
  `--es_out=${outDir}`,
  // TypeScript, and ".js" in relative imports (ES modules in Node.js need the extension).
  "--es_opt=target=ts,import_extension=js",
  ...protos,
];
const protoc = spawnSync(python, args, { stdio: "inherit", cwd: protoRoot });
if (protoc.error) fail(`cannot run ${python}: ${protoc.error.message}`);
if (protoc.status !== 0) fail(`protoc exited with ${protoc.status}`);
console.log(`gen: ${protos.length} files from ${protoRoot} -> ${outDir}`);
