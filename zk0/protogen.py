"""Regenerate the committed gRPC stubs from protos/, or check that they are current.

The stubs are committed so that installing zk0 needs no protoc; this module is the one command that
regenerates them (`python -m zk0.protogen`) and the check CI runs (`python -m zk0.protogen --check`).
The repository root is a parameter so a test can run the check on a modified copy of the tree.
"""

import argparse
import importlib.resources
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

REPO_ROOT = Path(__file__).resolve().parents[1]
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files(root: Path) -> list[Path]:
    """Every .proto under root/protos, relative to root/protos (the import root)."""
    proto_root = root / "protos"
    return sorted(p.relative_to(proto_root) for p in proto_root.rglob("*.proto"))


def expected_outputs(root: Path) -> list[Path]:
    """The generated files, relative to the repository root, that the protos produce."""
    outputs = []
    for proto in proto_files(root):
        stem = proto.with_suffix("")
        outputs.extend(stem.parent / (stem.name + suffix) for suffix in GENERATED_SUFFIXES)
    return sorted(outputs)


def generate(root: Path, out_dir: Path) -> list[Path]:
    """Run protoc on root/protos, writing the stubs under out_dir; returns them relative to out_dir."""
    protos = proto_files(root)
    if not protos:
        raise FileNotFoundError(f"no .proto files under {root / 'protos'}")
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{root / 'protos'}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--pyi_out={out_dir}",
        *(str(p) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {[str(p) for p in protos]}")
    return expected_outputs(root)


def stale_files(root: Path) -> list[str]:
    """Generated files under root that differ from a fresh generation, are missing, or are orphaned."""
    with tempfile.TemporaryDirectory(prefix="zk0-protogen-") as tmp:
        fresh = generate(root, Path(tmp))
        stale = []
        for rel in fresh:
            committed = root / rel
            if not committed.is_file():
                stale.append(f"{rel} (missing)")
            elif committed.read_bytes() != (Path(tmp) / rel).read_bytes():
                stale.append(f"{rel} (differs)")
    expected = set(fresh)
    package_dirs = {rel.parts[0] for rel in fresh}
    for top in sorted(package_dirs):
        for path in sorted((root / top).rglob("*")):
            rel = path.relative_to(root)
            if path.name.endswith(GENERATED_SUFFIXES) and rel not in expected:
                stale.append(f"{rel} (no .proto generates it)")
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zk0.protogen", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed stubs are stale")
    parser.add_argument(
        "--root", type=Path, default=REPO_ROOT, help="repository root (default: this checkout)"
    )
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if args.check:
        stale = stale_files(root)
        if stale:
            print("generated gRPC stubs are stale:", file=sys.stderr)
            for line in stale:
                print(f"  {line}", file=sys.stderr)
            print("regenerate them with: python -m zk0.protogen", file=sys.stderr)
            return 1
        print(f"generated gRPC stubs are current ({len(expected_outputs(root))} files)")
        return 0
    written = generate(root, root)
    for rel in written:
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
