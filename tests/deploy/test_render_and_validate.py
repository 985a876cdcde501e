"""Every overlay renders with `kubectl kustomize`, and every rendered object passes strict schema
validation (kubernetes-validate, whose schemas ship in the package: no network) for the newest
Kubernetes it knows and for the oldest one the manifests support (1.27: native gRPC probes GA)."""
from __future__ import annotations

import pytest

from .conftest import OVERLAYS, Rendered

pytestmark = pytest.mark.timeout(60)

OLDEST_SUPPORTED = "1.27"


def test_there_are_dev_and_prod_overlays():
    assert {"dev", "prod"} <= set(OVERLAYS)


def test_overlay_renders_the_expected_objects(rendered: Rendered):
    kinds = sorted(o["kind"] for o in rendered.objects)
    for kind in ("Namespace", "ServiceAccount", "ConfigMap", "Service", "StatefulSet", "Deployment",
                 "PodDisruptionBudget", "NetworkPolicy"):
        assert kind in kinds, f"{rendered.overlay}: no {kind} in {kinds}"
    assert len(rendered.of_kind("ConfigMap")) == 2       # one for the coordinator, one for actors
    assert len(rendered.of_kind("Service")) == 2         # ClusterIP + headless
    assert rendered.of_kind("Secret") == [], "secret values never live in the repository"


def _versions() -> list[str]:
    from kubernetes_validate import utils

    available = utils.all_versions()
    oldest = [v for v in available if utils.major_minor(v) == OLDEST_SUPPORTED]
    assert oldest, f"kubernetes-validate has no {OLDEST_SUPPORTED} schemas (has {available})"
    return [oldest[0], utils.latest_version()]


@pytest.mark.parametrize("version", _versions())
def test_every_object_passes_strict_schema_validation(rendered: Rendered, version: str):
    from kubernetes_validate import utils

    problems = []
    for obj in rendered.objects:
        what = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            utils.validate(obj, version, strict=True)
        except utils.ValidationError as exc:
            problems.append(f"{what}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except utils.SchemaNotFoundError as exc:  # a kind the schemas do not know is an error here
            problems.append(f"{what}: {exc.message}")
    assert not problems, f"{rendered.overlay} against Kubernetes {version}:\n" + "\n".join(problems)


def test_strict_validation_catches_a_misspelt_field(rendered: Rendered):
    """The validator really is strict: one typo in a security context fails."""
    import copy

    from kubernetes_validate import utils

    sts = copy.deepcopy(rendered.one("StatefulSet"))
    ctx = sts["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    ctx["readOnlyRootFilesytem"] = ctx.pop("readOnlyRootFilesystem")
    with pytest.raises(utils.ValidationError):
        utils.validate(sts, utils.latest_version(), strict=True)


def test_validation_works_offline_from_the_packaged_schemas(rendered: Rendered, monkeypatch):
    """No network: every connection attempt fails, validation still passes (schemas are files in the
    installed package)."""
    import socket

    from kubernetes_validate import utils

    def no_network(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    utils.validate(rendered.one("StatefulSet"), utils.latest_version(), strict=True)
