"""Regenerate the stubs of `inference.proto`: `python -m tramontane_workers.contract.protogen`.

The generated `inference_pb2.py`, `inference_pb2.pyi` and `inference_pb2_grpc.py` are committed
beside the proto; a test regenerates them into a temporary directory and fails on any drift.
Needs `grpcio-tools` (the `test` extra).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

CONTRACT_DIR = Path(__file__).resolve().parent
PROTO = CONTRACT_DIR / "inference.proto"
SOURCE_ROOT = CONTRACT_DIR.parents[1]  # the `workers/` source root
GENERATED = ("inference_pb2.py", "inference_pb2.pyi", "inference_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on the proto, writing the package tree under `out_dir`; return the stubs."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    rel = PROTO.relative_to(SOURCE_ROOT)
    args = [
        "protoc",
        f"-I{SOURCE_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(rel),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    return [out_dir / rel.parent / name for name in GENERATED]


def main() -> int:
    """Regenerate the committed stubs in place."""
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            shutil.copyfile(path, CONTRACT_DIR / path.name)
            print(f"wrote {CONTRACT_DIR / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
