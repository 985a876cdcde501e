"""The rendered manifests agree with the code, so a renamed flag, setting or port fails here
instead of in a rollout.

Checked for every overlay: the container args are real `corral` subcommands with arguments their
parsers accept; every CORRAL_* variable of a container is a setting of its role (coordinator:
coordinator/config.py SETTINGS; actor: actor/runner.py SETTINGS) and its value is accepted by that
role's own validation; ports, Services, probes and the NetworkPolicy all use the port in
CORRAL_LISTEN; each role's `metrics` port, its prometheus.io annotations and the NetworkPolicy's
scrape rule use the port in its CORRAL_METRICS_LISTEN; the data dir is on the PVC and the root filesystem is read-only; the termination
grace periods outlast the processes' own shutdown budgets; the security settings hold.
"""
from __future__ import annotations

import argparse
import inspect
import re
from typing import Any

import pytest

from .conftest import DEPLOY, Rendered

pytestmark = pytest.mark.timeout(60)

UID = 10001


# ---- helpers ------------------------------------------------------------------------------------

def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def container(obj: dict[str, Any]) -> dict[str, Any]:
    [c] = pod_spec(obj)["containers"]
    return c


def coordinator(r: Rendered) -> dict[str, Any]:
    return r.one("StatefulSet", "corral-coordinator")


def actors(r: Rendered) -> dict[str, Any]:
    return r.one("Deployment", "corral-actor")


def env_of(r: Rendered, obj: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet builds it (downward API: a made-up pod name)."""
    c = container(obj)
    env: dict[str, str] = {}
    for source in c.get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"only ConfigMaps configure Corral, got {source}"
        cm = r.one("ConfigMap", source["configMapRef"]["name"])
        env.update({k: str(v) for k, v in cm.get("data", {}).items()})
    for var in c.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            assert var["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, var
            env[var["name"]] = "corral-actor-5d8f7c9b6d-x7k2p"
    return env


def listen_port(r: Rendered) -> int:
    host, _, port = env_of(r, coordinator(r))["CORRAL_LISTEN"].rpartition(":")
    assert host in ("0.0.0.0", "[::]"), f"CORRAL_LISTEN host {host!r}: a pod must listen beyond loopback"
    return int(port)


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def subcommands(parser: argparse.ArgumentParser) -> set[str]:
    return {name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices}


# ---- args and settings ----------------------------------------------------------------------------

def test_coordinator_args_are_the_coordinator_subcommand_of_corral(rendered: Rendered):
    from coordinator import cli

    c = container(coordinator(rendered))
    assert "command" not in c, "the image's ENTRYPOINT is `corral`; give args only"
    assert c["args"][0] == "coordinator" and c["args"][0] in subcommands(cli.build_parser())
    assert cli.build_parser().parse_args(c["args"]).command == "coordinator"


def test_actor_args_are_the_actor_subcommand_of_corral(rendered: Rendered):
    from actor import runner
    from coordinator import cli

    c = container(actors(rendered))
    assert "command" not in c
    assert c["args"][0] == "actor" and c["args"][0] in subcommands(cli.build_parser())
    runner.build_parser().parse_args(c["args"][1:])  # SystemExit on an unknown flag


def test_coordinator_env_names_are_real_settings_and_values_pass_its_validation(rendered: Rendered):
    from coordinator import cli, config

    env = env_of(rendered, coordinator(rendered))
    known = {s.env for s in config.SETTINGS}
    assert set(env) - known == set(), f"not coordinator settings: {sorted(set(env) - known)}"
    assert {"CORRAL_LISTEN", "CORRAL_DATA_DIR", "CORRAL_SHUTDOWN_GRACE_S"} <= set(env)
    args = cli.build_parser().parse_args(container(coordinator(rendered))["args"])
    cfg = config.from_arguments(args, environ=env)  # raises ConfigError naming a bad value
    assert cfg.data_dir == env["CORRAL_DATA_DIR"]


def test_actor_env_names_are_settings_the_runner_reads_and_values_pass_its_validation(rendered: Rendered):
    from actor import runner

    env = env_of(rendered, actors(rendered))
    known = {s.env for s in runner.SETTINGS}
    assert set(env) - known == set(), f"not actor settings: {sorted(set(env) - known)}"
    assert {"CORRAL_COORDINATOR", "CORRAL_APP", "CORRAL_ACTOR_ID"} <= set(env)
    cfg = runner.resolve_settings(runner.build_parser().parse_args(container(actors(rendered))["args"][1:]), env)
    assert cfg.actor_id == env["CORRAL_ACTOR_ID"]
    runner.load_app(cfg.app)  # the handler module exists in the package (and so in the image)


def test_actor_id_is_the_pod_name_from_the_downward_api(rendered: Rendered):
    [var] = [v for v in container(actors(rendered)).get("env", []) if v["name"] == "CORRAL_ACTOR_ID"]
    assert var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_configuration_is_only_environment_from_a_configmap(rendered: Rendered):
    for obj in (coordinator(rendered), actors(rendered)):
        c = container(obj)
        assert len(c["args"]) == 1, f"settings belong in the ConfigMap, not in args: {c['args']}"
        assert [s["configMapRef"]["name"] for s in c["envFrom"]], "no ConfigMap"
        literal = [v["name"] for v in c.get("env", []) if "value" in v]
        assert literal == [], f"literal env {literal}: put it in the ConfigMap"


# ---- ports, services, probes, network policy -----------------------------------------------------

def test_container_port_is_the_port_in_corral_listen(rendered: Rendered):
    [port] = [p for p in container(coordinator(rendered))["ports"] if p["name"] == "grpc"]
    assert port["containerPort"] == listen_port(rendered) and port.get("protocol", "TCP") == "TCP"


def test_services_select_the_coordinator_and_reach_its_grpc_port(rendered: Rendered):
    sts = coordinator(rendered)
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    services = {s["metadata"]["name"]: s for s in rendered.of_kind("Service")}
    headless = services[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    clusterip = services["corral-coordinator"]
    assert clusterip["spec"].get("type", "ClusterIP") == "ClusterIP"
    for svc in (clusterip, headless):
        assert labels_match(svc["spec"]["selector"], pod_labels), svc["metadata"]["name"]
        [port] = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"]
        assert port["port"] == listen_port(rendered)
        assert port["targetPort"] in ("grpc", listen_port(rendered))


def test_actors_dial_the_coordinator_service(rendered: Rendered):
    host, _, port = env_of(rendered, actors(rendered))["CORRAL_COORDINATOR"].rpartition(":")
    svc = rendered.one("Service", "corral-coordinator")
    ns = svc["metadata"]["namespace"]
    assert host in (svc["metadata"]["name"], f"corral-coordinator.{ns}", f"corral-coordinator.{ns}.svc",
                    f"corral-coordinator.{ns}.svc.cluster.local"), host
    assert int(port) in [p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc"]


def test_probes_are_native_grpc_on_the_grpc_port(rendered: Rendered):
    c = container(coordinator(rendered))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == listen_port(rendered), probe
        assert c[probe]["grpc"].get("service", "") == "", f"{probe}: the empty service name is the whole server"


def test_network_policy_admits_only_actors_and_clients_on_the_grpc_port(rendered: Rendered):
    [policy] = rendered.of_kind("NetworkPolicy")
    spec = policy["spec"]
    coordinator_labels = coordinator(rendered)["spec"]["template"]["metadata"]["labels"]
    assert labels_match(spec["podSelector"]["matchLabels"], coordinator_labels)
    assert spec["policyTypes"] == ["Ingress"]
    # The rule for the gRPC port (other ports, e.g. metrics, may have rules of their own).
    [rule] = [r for r in spec["ingress"] if listen_port(rendered) in [p["port"] for p in r["ports"]]]
    assert [p["port"] for p in rule["ports"]] == [listen_port(rendered)]
    selectors = [f["podSelector"]["matchLabels"] for f in rule["from"]]
    assert all(set(f) == {"podSelector"} for f in rule["from"]), "same namespace only"
    actor_labels = actors(rendered)["spec"]["template"]["metadata"]["labels"]
    assert any(labels_match(s, actor_labels) for s in selectors), "actors are not admitted"
    assert {"corral.dev/client": "true"} in selectors, "clients labelled corral.dev/client are not admitted"


def metrics_port(r: Rendered, obj: dict[str, Any]) -> int:
    host, _, port = env_of(r, obj)["CORRAL_METRICS_LISTEN"].rpartition(":")
    assert host in ("0.0.0.0", "[::]"), f"CORRAL_METRICS_LISTEN host {host!r}: Prometheus scrapes from another pod"
    return int(port)


@pytest.mark.parametrize("role", ["coordinator", "actor"])
def test_metrics_port_and_scrape_annotations_are_the_port_in_corral_metrics_listen(rendered: Rendered, role: str):
    obj = coordinator(rendered) if role == "coordinator" else actors(rendered)
    port = metrics_port(rendered, obj)
    [named] = [p for p in container(obj)["ports"] if p["name"] == "metrics"]
    assert named["containerPort"] == port and named.get("protocol", "TCP") == "TCP"
    annotations = obj["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    if role == "coordinator":
        assert port != listen_port(rendered), "metrics and gRPC need ports of their own"


def test_network_policy_admits_scrapes_from_monitoring_namespaces_on_the_metrics_port_only(rendered: Rendered):
    [policy] = rendered.of_kind("NetworkPolicy")
    port = metrics_port(rendered, coordinator(rendered))
    [rule] = [r for r in policy["spec"]["ingress"] if port in [p["port"] for p in r["ports"]]]
    assert [p["port"] for p in rule["ports"]] == [port]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"corral.dev/monitoring": "true"}}}]


# ---- storage, filesystem, shutdown --------------------------------------------------------------------

def test_data_dir_is_the_pvc_and_the_root_filesystem_is_read_only(rendered: Rendered):
    sts = coordinator(rendered)
    c = container(sts)
    data_dir = env_of(rendered, sts)["CORRAL_DATA_DIR"]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert data_dir in mounts, f"CORRAL_DATA_DIR {data_dir} is not a volume mount: {sorted(mounts)}"
    claim_names = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    assert mounts[data_dir]["name"] in claim_names and not mounts[data_dir].get("readOnly")
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert sts["spec"]["replicas"] == 1, "one coordinator: it is the single writer of its WAL"
    for obj in (sts, actors(rendered)):
        c = container(obj)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        volumes = {v["name"]: v for v in pod_spec(obj)["volumes"]}
        tmp = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}.get("/tmp")
        assert tmp and "emptyDir" in volumes[tmp], "/tmp must be a writable emptyDir"


def test_coordinator_outlives_its_shutdown_grace(rendered: Rendered):
    from coordinator import config

    sts = coordinator(rendered)
    env = env_of(rendered, sts)
    drain = float(env.get("CORRAL_DRAIN_GRACE_S", config.CoordinatorConfig.drain_grace_s))
    grace = drain + float(env["CORRAL_SHUTDOWN_GRACE_S"])  # SIGTERM: drain, then in-flight RPCs
    command = container(sts)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2
    pre_stop = float(command[1])
    assert 0 < pre_stop <= 15
    assert pod_spec(sts)["terminationGracePeriodSeconds"] > pre_stop + grace


def test_actors_outlive_their_grace_and_result_flush(rendered: Rendered):
    from actor import runner
    from actor.session import ActorSession

    deploy = actors(rendered)
    env = env_of(rendered, deploy)
    cfg = runner.resolve_settings(runner.build_parser().parse_args([]), env)
    flush = inspect.signature(ActorSession).parameters["flush_timeout_s"].default
    assert pod_spec(deploy)["terminationGracePeriodSeconds"] > cfg.grace_s + flush


# ---- security, scaling, secrets, labels ------------------------------------------------------------

def dockerfile_uid() -> int:
    users = re.findall(r"^USER\s+(\d+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    return int(users[-1])


def test_pods_are_hardened(rendered: Rendered):
    assert dockerfile_uid() == UID
    for obj in (coordinator(rendered), actors(rendered)):
        pod = pod_spec(obj)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == UID
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        ctx = container(obj)["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"] and not ctx["capabilities"].get("add")
        res = container(obj)["resources"]
        assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
    assert pod_spec(coordinator(rendered))["securityContext"]["fsGroup"] == UID, "the PVC must be writable"


def test_secrets_are_optional_references_only(rendered: Rendered):
    for obj in (coordinator(rendered), actors(rendered)):
        secrets = [v["secret"] for v in pod_spec(obj)["volumes"] if "secret" in v]
        assert {s["secretName"] for s in secrets} == {"corral-tls", "corral-tokens"}
        assert all(s["optional"] is True for s in secrets), "the pods must start without the Secrets"


def test_actor_fleet_is_sized_and_disruption_budgeted(rendered: Rendered):
    deploy = actors(rendered)
    hpas = rendered.of_kind("HorizontalPodAutoscaler")
    if hpas:
        [hpa] = hpas
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                                 "name": deploy["metadata"]["name"]}
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
        assert "replicas" not in deploy["spec"], "an HPA-managed Deployment must not also fix replicas"
        count = hpa["spec"]["minReplicas"]
    else:
        count = deploy["spec"]["replicas"]
    assert count == {"dev": 2, "prod": 6}.get(rendered.overlay, count)
    [pdb] = rendered.of_kind("PodDisruptionBudget")
    assert labels_match(pdb["spec"]["selector"]["matchLabels"], deploy["spec"]["template"]["metadata"]["labels"])


def test_every_object_has_the_common_labels_and_the_overlay_namespace(rendered: Rendered):
    [ns] = rendered.of_kind("Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in rendered.objects:
        labels = obj["metadata"].get("labels", {})
        what = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] != "Namespace":
            assert labels.get("app.kubernetes.io/name") == "corral", what
            assert labels.get("app.kubernetes.io/part-of") == "corral", what
            assert obj["metadata"]["namespace"] == ns["metadata"]["name"], what
    for obj in (coordinator(rendered), actors(rendered)):
        assert obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] in ("coordinator", "actor")
