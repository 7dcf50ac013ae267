"""The committed stubs are exactly what scripts/generate_stubs.py makes from proto/, and the proto passes buf."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2
from imgcls.v1 import classifier_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "client" / "imgcls" / "v1"
BUF = Path(sys.executable).parent / "buf"
EXPECTED_FILES = ["classifier_pb2.py", "classifier_pb2.pyi", "classifier_pb2_grpc.py", "classifier_pb2_grpc.pyi"]


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_stubs", ROOT / "scripts" / "generate_stubs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def buf(*args: str) -> subprocess.CompletedProcess[str]:
    if not BUF.is_file():
        pytest.fail(f"{BUF} not found: install the dev extra (buf-bin)")
    return subprocess.run([str(BUF), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_committed_stubs_are_what_the_generator_makes(tmp_path: Path) -> None:
    written = load_generator().generate(tmp_path)
    generated = tmp_path / "imgcls" / "v1"
    assert sorted(p.name for p in written) == EXPECTED_FILES
    assert all(p.parent == generated for p in written)
    committed = sorted(p.name for p in COMMITTED.glob("*_pb2*.py*"))
    assert committed == EXPECTED_FILES
    for name in EXPECTED_FILES:
        assert (generated / name).read_bytes() == (COMMITTED / name).read_bytes(), (
            f"client/imgcls/v1/{name} is stale: run python scripts/generate_stubs.py"
        )


def test_buf_lint_passes() -> None:
    result = buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_buf_build_gives_the_same_contract_as_the_stubs(tmp_path: Path) -> None:
    image = tmp_path / "image.binpb"
    result = buf("build", "--exclude-source-info", "-o", str(image))
    assert result.returncode == 0, result.stdout + result.stderr
    files = {f.name: f for f in descriptor_pb2.FileDescriptorSet.FromString(image.read_bytes()).file}
    built = files["imgcls/v1/classifier.proto"]
    compiled = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(compiled)
    assert built.package == compiled.package == "imgcls.v1"
    assert [s.name for s in built.service] == ["ImageClassifierService"]
    assert [m.name for m in built.service[0].method] == ["Classify", "ClassifyStream", "ListModels", "GetModel"]
    assert [m.name for m in built.message_type] == [m.name for m in compiled.message_type]
    assert [e.name for e in built.enum_type] == [e.name for e in compiled.enum_type]
    for built_message, compiled_message in zip(built.message_type, compiled.message_type, strict=True):
        assert [(f.name, f.number, f.type, f.label) for f in built_message.field] == [
            (f.name, f.number, f.type, f.label) for f in compiled_message.field
        ], built_message.name
