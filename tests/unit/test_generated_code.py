"""The committed bindings in proto/corral/v1 are exactly what the pinned grpcio-tools generates."""
from __future__ import annotations

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
GENERATED_DIR = ROOT / "proto" / "corral" / "v1"


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "tools" / "gen_proto.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generated_files(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*_pb2*.py*"))}


@pytest.mark.timeout(60)
def test_regenerating_the_bindings_gives_no_diff(tmp_path):
    pytest.importorskip("grpc_tools")
    load_generator().generate(tmp_path)
    fresh = generated_files(tmp_path / "corral" / "v1")
    committed = generated_files(GENERATED_DIR)
    assert fresh.keys() == committed.keys(), "a .proto was added or removed: run `make gen`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"generated code is out of date (run `make gen`): {stale}"


def test_every_proto_has_bindings():
    protos = {p.stem for p in GENERATED_DIR.glob("*.proto")}
    assert protos, "no .proto files found"
    for stem in protos:
        assert (GENERATED_DIR / f"{stem}_pb2.py").exists(), f"{stem}.proto has no generated module"
