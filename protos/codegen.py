"""The only way to regenerate the edge stubs: `python protos/codegen.py [OUT_ROOT]`.

protoc runs from the repository root with `protos/edge.proto` as the file name, so the
generated `edge_pb2_grpc.py` imports `from protos import edge_pb2` and works as a package.
`tests/test_protos.py` generates into a temporary folder and fails on any difference.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTO = "protos/edge.proto"
GENERATED = ("edge_pb2.py", "edge_pb2.pyi", "edge_pb2_grpc.py")


def generate(out_root: Path = REPO_ROOT) -> list[Path]:
    """Write the stubs under `out_root/protos/`; returns their paths."""
    from grpc_tools import protoc  # dev dependency: only regeneration needs it

    (out_root / "protos").mkdir(parents=True, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{REPO_ROOT}", f"--python_out={out_root}",
            f"--pyi_out={out_root}", f"--grpc_python_out={out_root}", str(REPO_ROOT / PROTO)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    return [out_root / "protos" / name for name in GENERATED]


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT
    for path in generate(out):
        print(path)
