"""protos/: the committed stubs are exactly what protos/codegen.py makes from edge.proto."""

from __future__ import annotations

from pathlib import Path

import pytest

from protos import codegen, edge_pb2


def test_committed_stubs_match_a_fresh_generation(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev extra) regenerates the stubs")
    # Execute: regenerate into a temporary folder
    fresh = codegen.generate(tmp_path)
    # Assert: byte for byte the committed files
    stale = [p.name for p in fresh
             if p.read_bytes() != (codegen.REPO_ROOT / "protos" / p.name).read_bytes()]
    assert not stale, (f"{stale} drifted from protos/edge.proto; run `python protos/codegen.py` "
                       "and commit the result")


def test_the_service_has_the_versioned_package_and_its_rpcs():
    service = edge_pb2.DESCRIPTOR.services_by_name["EdgeDevice"]
    assert service.full_name == "unikd.edge.v1.EdgeDevice"
    shapes = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert shapes == {"Ingest": (True, False), "Predict": (False, False),
                      "StreamPredict": (True, True), "Status": (False, False),
                      "ReloadModel": (False, False)}


def test_generated_grpc_module_imports_the_package_path():
    text = (Path(codegen.__file__).parent / "edge_pb2_grpc.py").read_text()
    assert "from protos import edge_pb2" in text  # works as a package, not only from protos/
