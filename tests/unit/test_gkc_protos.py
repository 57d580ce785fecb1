"""The committed protobuf/gRPC code is what ``make protos`` generates from protos/*.proto."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    (tmp_path / "protos").mkdir()
    protos = sorted((ROOT / "protos").glob("*.proto"))
    assert protos, "no .proto files"
    for proto in protos:
        shutil.copy(proto, tmp_path / "protos" / proto.name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            ".",
            "--python_out=.",
            "--pyi_out=.",
            "--grpc_python_out=.",
            *[f"protos/{p.name}" for p in protos],
        ],
        cwd=tmp_path,
        check=True,
    )
    stale = []
    for fresh in sorted((tmp_path / "protos").glob("*_pb2*.py*")):
        committed = ROOT / "protos" / fresh.name
        if not committed.is_file() or committed.read_bytes() != fresh.read_bytes():
            stale.append(fresh.name)
    assert not stale, f"stale generated code {stale}: run `make protos`"


def test_gkc_wire_contract() -> None:
    """The fields other services rely on exist with the documented types."""
    from protos import gkc_pb2

    resp = gkc_pb2.BatchGetResponse(user=b"\0" * 8, user_dim=2, user_found=True)
    resp.items.data = b"\0" * 16
    resp.items.rows = 2
    again = gkc_pb2.BatchGetResponse.FromString(resp.SerializeToString())
    assert (again.user_dim, again.items.rows, len(again.items.data)) == (2, 2, 16)
    assert gkc_pb2.DESCRIPTOR.package == "keep.gkc.v1"
