"""`make cluster`: the dev overlay's Kubernetes configuration, run as local processes.

Renders an overlay (`kubectl kustomize deploy/overlays/dev`), takes the coordinator's and the
actors' container args and environment exactly as the manifests give them (ConfigMap `envFrom`,
literal `env`, downward-API `fieldRef`s), changes only what cannot hold on one machine, and starts
1 coordinator + N actors as separate `corral` processes configured ONLY through those environment
variables (the children see no CORRAL_* variable of the calling shell). What is changed:

- CORRAL_LISTEN -> 127.0.0.1:PORT and the actors' CORRAL_COORDINATOR -> 127.0.0.1:PORT
  (there is no Service DNS here);
- CORRAL_DATA_DIR -> a temporary directory (there is no PersistentVolume);
- CORRAL_METRICS_LISTEN (when the manifests set it) -> 127.0.0.1:0, a free loopback port per
  process (in a cluster every pod has its own IP; here they would all want port 9464);
- `fieldRef: metadata.name` -> a generated pod name (`corral-actor-5d8f7c9b6d-x7k2p`), so each
  actor gets its own CORRAL_ACTOR_ID as in a cluster.

It waits until the coordinator answers SERVING on the standard gRPC health service (what the
kubelet's probes ask) and every actor is connected, prints the cluster status, and stops every
process it started by pid on Ctrl-C or SIGTERM (SIGTERM first, SIGKILL after the manifest's
terminationGracePeriodSeconds), or as soon as one of them exits.

    python tools/k8s_stand_in.py [--overlay deploy/overlays/dev] [--actors N] [--port 7070]
    python tools/k8s_stand_in.py --exit-after-start        # start, print status, stop (a smoke test)

`StandIn` is the same as a library (the deploy tests use it).
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import grpc
import yaml
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from corral.v1 import admin_service_pb2, admin_service_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OVERLAY = REPO_ROOT / "deploy" / "overlays" / "dev"
COMPONENT = "app.kubernetes.io/component"
ENV_METRICS_LISTEN = "CORRAL_METRICS_LISTEN"
METRICS_LOCAL = "127.0.0.1:0"  # any free loopback port, one per process


class StandInError(RuntimeError):
    pass


# ---- reading the manifests ------------------------------------------------------------------------

def render(overlay: Path | str = DEFAULT_OVERLAY) -> list[dict[str, Any]]:
    """Every object of `kubectl kustomize OVERLAY`."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise StandInError("kubectl is not on PATH: it renders the manifests (`kubectl kustomize`)")
    proc = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise StandInError(f"kubectl kustomize {overlay} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def find(objects: Iterable[dict[str, Any]], kind: str, component: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o.get("kind") == kind
            and (component is None or o["metadata"].get("labels", {}).get(COMPONENT) == component)]


def workload(objects: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
    found = find(objects, kind, component)
    if len(found) != 1:
        raise StandInError(f"expected one {kind} labelled {COMPONENT}={component}, found {len(found)}")
    return found[0]


def only_container(obj: dict[str, Any]) -> dict[str, Any]:
    containers = obj["spec"]["template"]["spec"]["containers"]
    if len(containers) != 1:
        raise StandInError(f"{obj['kind']}/{obj['metadata']['name']}: expected one container")
    return containers[0]


def _config_map(objects: list[dict[str, Any]], name: str) -> dict[str, str] | None:
    for obj in find(objects, "ConfigMap"):
        if obj["metadata"]["name"] == name:
            return {k: str(v) for k, v in (obj.get("data") or {}).items()}
    return None


def _field_ref(path: str, pod: dict[str, str]) -> str:
    values = {"metadata.name": pod["name"], "metadata.namespace": pod["namespace"],
              "status.podIP": "127.0.0.1", "spec.nodeName": socket.gethostname(),
              "spec.serviceAccountName": pod.get("serviceAccountName", "default")}
    if path not in values:
        raise StandInError(f"downward API fieldRef {path!r} is not supported by the stand-in")
    return values[path]


def container_env(objects: list[dict[str, Any]], container: dict[str, Any], pod: dict[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: `envFrom` first, then `env` over it."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            ref = source["configMapRef"]
            data = _config_map(objects, ref["name"])
            if data is None:
                if ref.get("optional"):
                    continue
                raise StandInError(f"envFrom: ConfigMap {ref['name']!r} is not in the manifests")
            env.update({source.get("prefix", "") + k: v for k, v in data.items()})
        else:
            raise StandInError(f"envFrom source {sorted(source)} is not supported by the stand-in")
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        elif "valueFrom" in var and "fieldRef" in var["valueFrom"]:
            env[var["name"]] = _field_ref(var["valueFrom"]["fieldRef"]["fieldPath"], pod)
        elif "valueFrom" in var and "configMapKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["configMapKeyRef"]
            data = _config_map(objects, ref["name"]) or {}
            if ref["key"] in data:
                env[var["name"]] = data[ref["key"]]
            elif not ref.get("optional"):
                raise StandInError(f"env {var['name']}: key {ref['key']!r} not in ConfigMap {ref['name']!r}")
        elif "valueFrom" in var:
            raise StandInError(f"env {var['name']}: {sorted(var['valueFrom'])} is not supported by the stand-in")
        else:
            env[var["name"]] = ""
    return env


def pod_name(owner: str, kind: str, index: int, rng: random.Random) -> str:
    """A pod name as the controllers make them: `sts-0`, or `deploy-<template hash>-<5 chars>`."""
    if kind == "StatefulSet":
        return f"{owner}-{index}"
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # the characters Kubernetes uses in generated names
    template_hash = "".join(rng.choice(alphabet) for _ in range(10))
    return f"{owner}-{template_hash}-{''.join(rng.choice(alphabet) for _ in range(5))}"


# ---- the plan: which processes, with which environment --------------------------------------------

@dataclass
class ProcessSpec:
    name: str                     # the pod name it stands in for
    role: str                     # coordinator / actor
    args: list[str]               # the container's args (the image's ENTRYPOINT is `corral`)
    env: dict[str, str]           # exactly the CORRAL_* environment of the container, after overrides
    grace_s: float                # terminationGracePeriodSeconds


@dataclass
class Plan:
    coordinator: ProcessSpec
    actors: list[ProcessSpec]
    target: str                   # where the coordinator listens (loopback)
    namespace: str
    overridden: dict[str, str] = field(default_factory=dict)


def _args(obj: dict[str, Any], container: dict[str, Any]) -> list[str]:
    if container.get("command"):
        raise StandInError(f"{obj['kind']}/{obj['metadata']['name']}: a container `command` replaces the "
                           "image's `corral` entrypoint; the stand-in runs only `corral` args")
    return [str(a) for a in container.get("args", [])]


def _grace(obj: dict[str, Any]) -> float:
    return float(obj["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30))


def _replicas(objects: list[dict[str, Any]], deployment: dict[str, Any]) -> int:
    if "replicas" in deployment["spec"]:
        return int(deployment["spec"]["replicas"])
    for hpa in find(objects, "HorizontalPodAutoscaler"):  # HPA-managed: its minimum
        ref = hpa["spec"]["scaleTargetRef"]
        if ref["kind"] == "Deployment" and ref["name"] == deployment["metadata"]["name"]:
            return int(hpa["spec"].get("minReplicas", 1))
    return 1


def plan(objects: list[dict[str, Any]], *, port: int, data_dir: Path | str, actors: int | None = None,
         seed: int | None = None) -> Plan:
    """The processes the manifests describe, with loopback/temp-dir overrides."""
    rng = random.Random(seed)
    target = f"127.0.0.1:{port}"
    sts = workload(objects, "StatefulSet", "coordinator")
    deploy = workload(objects, "Deployment", "actor")
    namespace = sts["metadata"].get("namespace", "default")

    def spec(obj: dict[str, Any], role: str, index: int, overrides: dict[str, str]) -> ProcessSpec:
        container = only_container(obj)
        name = pod_name(obj["metadata"]["name"], obj["kind"], index, rng)
        pod = {"name": name, "namespace": namespace,
               "serviceAccountName": obj["spec"]["template"]["spec"].get("serviceAccountName", "default")}
        env = container_env(objects, container, pod)
        for key in overrides:
            if key not in env:
                raise StandInError(f"{obj['kind']}/{obj['metadata']['name']}: the manifests do not set {key}")
        env.update(overrides)
        if ENV_METRICS_LISTEN in env:
            env[ENV_METRICS_LISTEN] = METRICS_LOCAL
        return ProcessSpec(name=name, role=role, args=_args(obj, container), env=env, grace_s=_grace(obj))

    coordinator_overrides = {"CORRAL_LISTEN": target, "CORRAL_DATA_DIR": str(data_dir)}
    actor_overrides = {"CORRAL_COORDINATOR": target}
    count = _replicas(objects, deploy) if actors is None else actors
    coordinator = spec(sts, "coordinator", 0, coordinator_overrides)
    actor_specs = [spec(deploy, "actor", i, actor_overrides) for i in range(count)]
    overridden = {**coordinator_overrides, **actor_overrides}
    if any(ENV_METRICS_LISTEN in s.env for s in [coordinator, *actor_specs]):
        overridden[ENV_METRICS_LISTEN] = METRICS_LOCAL
    return Plan(coordinator=coordinator, actors=actor_specs, target=target, namespace=namespace,
                overridden=overridden)


# ---- running it ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StandIn:
    """1 coordinator + N actors as local processes, configured only by the manifests' environment.

    >>> with StandIn(actors=2, port=0) as stand_in:   # started and ready
    ...     stand_in.status()
    """

    def __init__(self, overlay: Path | str = DEFAULT_OVERLAY, *, actors: int | None = None, port: int = 7070,
                 workdir: Path | str | None = None, objects: list[dict[str, Any]] | None = None) -> None:
        self.overlay = Path(overlay)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="corral-stand-in-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        objects = render(self.overlay) if objects is None else objects
        self.plan = plan(objects, port=port or free_port(), data_dir=self.workdir / "data", actors=actors)
        self.target = self.plan.target
        self.procs: dict[str, subprocess.Popen] = {}
        self._specs: dict[str, ProcessSpec] = {}
        self._channel: grpc.Channel | None = None

    # -- processes --

    def _spawn(self, spec: ProcessSpec) -> subprocess.Popen:
        # Only the manifest's environment: nothing CORRAL_* leaks in from the calling shell.
        base = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        pythonpath = os.pathsep.join(p for p in (str(REPO_ROOT), base.get("PYTHONPATH", "")) if p)
        log = open(self.workdir / f"{spec.name}.log", "wb")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "coordinator.cli", *spec.args],
                env={**base, "PYTHONPATH": pythonpath, **spec.env},
                cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)  # Ctrl-C reaches only the stand-in, which sends SIGTERM like a kubelet
        finally:
            log.close()
        self.procs[spec.name] = proc
        self._specs[spec.name] = spec
        return proc

    def start(self, timeout_s: float = 30.0) -> None:
        """Start everything and wait until the coordinator is SERVING and every actor connected."""
        try:
            self._spawn(self.plan.coordinator)
            for spec in self.plan.actors:
                self._spawn(spec)
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def exited(self) -> dict[str, int]:
        return {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        want = {spec.name for spec in self.plan.actors}
        channel = self.channel()
        health = health_pb2_grpc.HealthStub(channel)
        admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        seen: set[str] = set()
        while True:
            dead = self.exited()
            if dead:
                raise StandInError(f"exited during start-up: {dead}\n{self.logs()}")
            try:
                serving = health.Check(health_pb2.HealthCheckRequest(), timeout=1).status \
                    == health_pb2.HealthCheckResponse.SERVING
                if serving:
                    status = admin.GetClusterStatus(admin_service_pb2.GetClusterStatusRequest(), timeout=2)
                    seen = {a.identity.actor_id for a in status.actors}
                    if want <= seen:
                        return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise StandInError(f"not ready within {timeout_s:g} s (actors connected: {sorted(seen)}, "
                                   f"expected {sorted(want)})\n{self.logs()}")
            time.sleep(0.05)

    def stop(self) -> dict[str, int]:
        """SIGTERM every process (actors first, so they flush results), SIGKILL after its grace."""
        order = [s.name for s in self.plan.actors] + [self.plan.coordinator.name]
        running = [self.procs[n] for n in order if n in self.procs]
        for proc in running:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for name in order:
            proc = self.procs.get(name)
            if proc is None:
                continue
            try:
                proc.wait(timeout=self._specs[name].grace_s)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.exited()

    def __enter__(self) -> "StandIn":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- queries --

    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.target)
        return self._channel

    def status(self) -> dict[str, Any]:
        admin = admin_service_pb2_grpc.AdminServiceStub(self.channel())
        reply = admin.GetClusterStatus(admin_service_pb2.GetClusterStatusRequest(), timeout=5)
        return json_format.MessageToDict(reply)

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"==== {p.name}\n{p.read_text(errors='replace')[-tail:]}"
                         for p in sorted(self.workdir.glob("*.log")))


def describe(stand_in: StandIn, *, interactive: bool = True) -> str:
    p = stand_in.plan
    n = len(p.actors)
    lines = [f"Stand-in for {stand_in.overlay} (namespace {p.namespace}): 1 coordinator + {n} actor{'s' * (n != 1)}, "
             f"configured only by the manifests' environment.",
             f"Changed for this machine: {', '.join(f'{k}={v}' for k, v in p.overridden.items())}",
             f"Logs: {stand_in.workdir}/*.log (removed when it stops)", ""]
    for spec in [p.coordinator, *p.actors]:
        env = " ".join(f"{k}={v}" for k, v in sorted(spec.env.items()))
        lines.append(f"  {spec.name} (pid {stand_in.procs[spec.name].pid}): corral {' '.join(spec.args)}  [{env}]")
    if interactive:
        lines += ["", f"Try: corral submit echo '{{\"hello\":\"world\"}}' --wait --coordinator {stand_in.target}",
                  f"     grpcurl -plaintext {stand_in.target} corral.v1.AdminService/GetClusterStatus",
                  "Ctrl-C stops everything."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a kustomize overlay's coordinator and actors as local "
                                                 "processes, configured only by the manifests' environment.")
    parser.add_argument("--overlay", default=str(DEFAULT_OVERLAY), help="kustomize directory (default: dev)")
    parser.add_argument("--actors", type=int, default=None, help="actor count (default: the manifests')")
    parser.add_argument("--port", type=int, default=7070, help="loopback port for the coordinator (0: any free)")
    parser.add_argument("--exit-after-start", action="store_true", help="print the status, then stop")
    args = parser.parse_args(argv)
    try:
        stand_in = StandIn(args.overlay, actors=args.actors, port=args.port)
    except StandInError as exc:
        print(f"k8s_stand_in: {exc}", file=sys.stderr)
        return 2
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    code = 0
    try:
        stand_in.start()
        print(describe(stand_in, interactive=not args.exit_after_start), flush=True)
        print(yaml.safe_dump({"clusterStatus": stand_in.status()}, sort_keys=False), flush=True)
        while not args.exit_after_start and not stop["now"]:
            dead = stand_in.exited()
            if dead:
                print(f"k8s_stand_in: process exited: {dead}\n{stand_in.logs()}", file=sys.stderr)
                code = 1
                break
            time.sleep(0.2)
    except StandInError as exc:
        print(f"k8s_stand_in: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        pass
    finally:
        stand_in.stop()
    print("k8s_stand_in: stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
