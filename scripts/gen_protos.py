"""Generate the Python code for protos/ into a target folder (gen/ by default).

With --check, generate into a temporary folder and fail if it differs from the target,
so CI catches code that is stale against its .proto files.
"""

from __future__ import annotations

import filecmp
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def _plugin(name: str) -> str:
    """The mypy-protobuf plugin installed beside this interpreter (PATH may lack the venv)."""
    found = shutil.which(name, path=sysconfig.get_path("scripts")) or shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the dev dependencies (mypy-protobuf)")
    return found


def generate(out_dir: Path) -> None:
    """Run protoc (from grpcio-tools) over every .proto, writing code, gRPC stubs and their
    typed .pyi stubs (mypy-protobuf) for the type checker."""
    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--mypy_out=quiet:{out_dir}",
        f"--mypy_grpc_out=quiet:{out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Proto paths mirror the package (audiences/v1), so the generated imports work as
    # they are once each folder is a package.
    for folder in {p.parent for p in out_dir.rglob("*_pb2.py")}:
        while folder != out_dir:
            (folder / "__init__.py").touch()
            folder = folder.parent


def differing(a: Path, b: Path) -> list[str]:
    """Relative paths that differ between two trees."""
    files_a = {
        p.relative_to(a) for p in a.rglob("*") if p.is_file() and "__pycache__" not in str(p)
    }
    files_b = {
        p.relative_to(b) for p in b.rglob("*") if p.is_file() and "__pycache__" not in str(p)
    }
    diffs = sorted(str(p) for p in files_a ^ files_b)
    for rel in files_a & files_b:
        if not filecmp.cmp(a / rel, b / rel, shallow=False):
            diffs.append(str(rel))
    return diffs


def main(argv: list[str]) -> int:
    check = "--check" in argv
    target = ROOT / ([a for a in argv if not a.startswith("--")] or ["gen"])[0]
    if not check:
        shutil.rmtree(target / "audiences", ignore_errors=True)
        generate(target)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        diffs = differing(Path(tmp), target)
    if diffs:
        print("generated code is stale; run `make protos`:", *diffs, sep="\n  ")
        return 1
    print("generated code is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
