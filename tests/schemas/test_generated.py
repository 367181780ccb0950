"""The committed *_pb2.py modules are what protoc makes of the committed .proto files."""

from __future__ import annotations

from pathlib import Path

from grpc_tools import protoc

from schemas import HERE


def test_generated_protobuf_modules_are_up_to_date(tmp_path: Path) -> None:
    protos = sorted(HERE.glob("*.proto"))
    assert protos
    rc = protoc.main(["protoc", f"-I{HERE}", f"--python_out={tmp_path}", *map(str, protos)])
    assert rc == 0
    for proto in protos:
        name = f"{proto.stem}_pb2.py"
        assert (tmp_path / name).read_text() == (HERE / name).read_text(), (
            f"schemas/{name} is stale: regenerate it (see README, Layout)"
        )
