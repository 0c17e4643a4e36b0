"""Generate the Python gRPC code of the public API from protos/ with grpc_tools.protoc.

    python -m prefmine.cli.gen_protos            # (re)write prefmine/v1/*_pb2*.py{,i}
    python -m prefmine.cli.gen_protos --check    # exit 1 if the committed generated code is stale

protoc runs with ``-I protos``, so ``protos/prefmine/v1/recommender.proto`` becomes the module
``prefmine.v1.recommender_pb2`` (plus ``_pb2_grpc`` and a ``.pyi`` stub). The generated code is committed so that
installing prefmine needs no protoc; ``--check`` (run by the test suite) catches a proto edited without
regenerating. The output depends on the grpcio-tools version pinned in pyproject.toml.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import tempfile
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "protos"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files(proto_root: Path = PROTO_ROOT) -> list[Path]:
    """All .proto files under proto_root, sorted, as paths relative to it."""
    return sorted(p.relative_to(proto_root) for p in proto_root.rglob("*.proto"))


def expected_outputs(protos: list[Path]) -> list[Path]:
    """Generated files (relative to the repository root) for the given relative proto paths."""
    out = []
    for proto in protos:
        stem = proto.with_suffix("")
        out += [stem.parent / (stem.name + suffix) for suffix in SUFFIXES]
    return out


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc for every proto under proto_root, writing into out_dir; returns the relative outputs."""
    from grpc_tools import protoc

    protos = proto_files(proto_root)
    if not protos:
        raise SystemExit(f"no .proto files under {proto_root}")
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in protos],
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    return expected_outputs(protos)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _package_inits(outputs: list[Path]) -> list[Path]:
    """__init__.py files every generated module's directory needs (the top package is the ML library's)."""
    dirs = {o.parent for o in outputs}
    inits = set()
    for d in dirs:
        while len(d.parts) > 1:  # prefmine/v1, not prefmine/ itself
            inits.add(d / "__init__.py")
            d = d.parent
    return sorted(inits)


INIT_TEXT = '"""Generated gRPC API types of prefmine (from protos/); see prefmine/cli/gen_protos.py."""\n'


def run(check: bool, root: Path = ROOT) -> int:
    """Regenerate (check=False) or compare (check=True). Returns the process exit code."""
    with tempfile.TemporaryDirectory(prefix="prefmine-protos-") as tmp:
        outputs = generate(Path(tmp), root / "protos")
        stale = []
        for rel in outputs:
            new = (Path(tmp) / rel).read_bytes()
            dest = root / rel
            old = dest.read_bytes() if dest.exists() else None
            if old == new:
                continue
            if check:
                stale.append(rel)
                if old is not None:
                    diff = difflib.unified_diff(
                        old.decode(errors="replace").splitlines(),
                        new.decode(errors="replace").splitlines(),
                        f"committed/{rel}",
                        f"generated/{rel}",
                        lineterm="",
                        n=1,
                    )
                    print("\n".join(list(diff)[:40]), file=sys.stderr)
            else:
                _write_atomic(dest, new)
                print(f"wrote {rel}")
        for init in _package_inits(outputs):
            if not (root / init).exists():
                if check:
                    stale.append(init)
                else:
                    _write_atomic(root / init, INIT_TEXT.encode())
                    print(f"wrote {init}")
    if check:
        if stale:
            print("generated code is stale: " + ", ".join(map(str, stale)), file=sys.stderr)
            print("run: python -m prefmine.cli.gen_protos", file=sys.stderr)
            return 1
        print(f"generated code up to date ({len(outputs)} files)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prefmine.cli.gen_protos", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the committed generated code is stale"
    )
    args = parser.parse_args(argv)
    return run(check=args.check)


if __name__ == "__main__":
    sys.exit(main())
