"""Shared fixtures for the deployment tests: the rendered overlays and the stand-in module.

`kubectl kustomize` renders each overlay once per session. Without kubectl on PATH the tests that
need rendered manifests are skipped, saying so; everything else still runs.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
KUBECTL = shutil.which("kubectl")


class Rendered:
    """The objects of one rendered overlay, with lookups by kind and name."""

    def __init__(self, overlay: str, text: str, seconds: float) -> None:
        self.overlay = overlay
        self.text = text
        self.seconds = seconds
        self.objects: list[dict[str, Any]] = [d for d in yaml.safe_load_all(text) if d]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind} {name or ''}, found {len(found)}"
        return found[0]


_cache: dict[str, Rendered] = {}


def render(overlay: str) -> Rendered:
    if overlay not in _cache:
        started = time.perf_counter()
        proc = subprocess.run([KUBECTL, "kustomize", str(DEPLOY / "overlays" / overlay)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"kubectl kustomize deploy/overlays/{overlay} failed:\n{proc.stderr}"
        _cache[overlay] = Rendered(overlay, proc.stdout, time.perf_counter() - started)
    return _cache[overlay]


@pytest.fixture(params=OVERLAYS)
def rendered(request) -> Rendered:
    if KUBECTL is None:
        pytest.skip("kubectl (with its built-in kustomize) is not on PATH: cannot render the overlays")
    return render(request.param)


@pytest.fixture(scope="session")
def stand_in_module():
    """tools/k8s_stand_in.py, imported by path (tools/ is not a package)."""
    name = "corral_k8s_stand_in"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "tools" / "k8s_stand_in.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
