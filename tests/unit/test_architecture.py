"""The rules of ARCHITECTURE.md that a machine can check, on the import graph."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SERVER = Path(__file__).resolve().parents[2] / "service" / "mcprouter" / "server"
GRPC_ALLOWED = ("edge", "observability")
STORES = ("postgres", "clickhouse", "chroma", "redis")


def imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names), at any depth of the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules() -> dict[Path, set[str]]:
    return {path: imports(path) for path in SERVER.rglob("*.py")}


def top_folder(path: Path) -> str:
    return path.relative_to(SERVER).parts[0]


def test_only_the_edge_and_observability_import_grpc() -> None:
    offenders = {
        str(path.relative_to(SERVER)): sorted(n for n in names if n.split(".")[0] == "grpc")
        for path, names in modules().items()
        if top_folder(path) not in GRPC_ALLOWED
        and any(n.split(".")[0] in ("grpc", "grpc_status", "grpc_health") for n in names)
    }
    # cli.py imports grpc lazily for the `health` command only.
    offenders.pop("cli.py", None)
    assert offenders == {}


def test_the_cache_and_the_stores_do_not_load_our_grpc_code_even_indirectly() -> None:
    # (chromadb itself loads grpc through OpenTelemetry; that is not ours to rule.)
    wanted = [
        "mcprouter.server.cache",
        "mcprouter.server.app",
        *(f"mcprouter.server.{store}.processor" for store in STORES),
        "mcprouter.server.errors",
        "mcprouter.server.budget",
        "mcprouter.server.operations",
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {wanted!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('mcprouter.server.edge', "
        "'mcprouter.server.observability', 'mcprouter.v1.router_service_pb2_grpc'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]", done.stdout


def test_no_processor_imports_a_sibling_store_package() -> None:
    offenders = []
    for path, names in modules().items():
        home = top_folder(path)
        if home not in STORES:
            continue
        for name in names:
            parts = name.split(".")
            if (
                parts[:2] == ["mcprouter", "server"]
                and len(parts) > 2
                and parts[2] in STORES
                and parts[2] != home
            ):
                offenders.append(f"{path.relative_to(SERVER)} imports {name}")
    assert offenders == []


def test_every_exception_class_of_the_service_is_in_the_one_tree() -> None:
    from mcprouter.server import errors

    tree = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.RouterError)
    }
    stray = []
    for path in SERVER.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ClassDef)
                and path.name != "errors.py"
                and any(
                    isinstance(b, ast.Name) and b.id.endswith(("Error", "Exception", "Unavailable"))
                    for b in node.bases
                )
            ):
                stray.append(f"{path.relative_to(SERVER)}: {node.name}")
    assert tree >= {"InvalidArgument", "Unavailable", "Unauthenticated", "DeadlineExceeded"}
    assert stray == []
