"""Fixtures for the contract tests: the gRPC contract as other tools and languages see it."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import REPO_ROOT, Cluster

VENV_BIN = Path(sys.executable).parent


def venv_tool(name: str) -> str | None:
    """A console script installed next to the interpreter (the dev extra), else one on PATH."""
    return shutil.which(name, path=str(VENV_BIN)) or shutil.which(name)


@pytest.fixture(scope="module")
def grpcurl_bin() -> str:
    path = venv_tool("grpcurl")
    if path is None:
        pytest.skip("grpcurl not found next to the interpreter or on PATH (pip install -e '.[dev]')")
    probe = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=20)
    if probe.returncode != 0:
        pytest.skip(f"{path} does not run: {(probe.stdout + probe.stderr).strip()[:300]}")
    return path


@pytest.fixture(scope="module")
def demo_cluster(tmp_path_factory) -> Cluster:
    """A coordinator and one actor running the demo app (echo, sleep, fail, ...), for one module."""
    cluster = Cluster(tmp_path_factory.mktemp("contract"))
    try:
        cluster.start_coordinator()
        cluster.start_actor("contract-actor", slots=4, app="actor.demo")
        yield cluster
    finally:
        cluster.stop()


__all__ = ["REPO_ROOT", "venv_tool"]
