"""The layering, checked on the source (parsed, never imported): the core package depends on
neither subproject nor on the command line, the tests of the core test the core alone, only the
TorchServe adapter knows TorchServe, and the client side of ``serving`` stays free of torch.

Every import counts, a lazy one inside a function included, except where a rule says otherwise.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CORE = REPO_ROOT / "trustgc"
CORE_TESTS = REPO_ROOT / "tests" / "core"
#: What the core must never import: the two subprojects it serves, TorchServe, the CLI package.
NOT_IN_CORE = {"training", "serving", "ts", "trustgc_cli"}
#: First-party packages the core's tests must not import (the core's tests test the core).
NOT_IN_CORE_TESTS = NOT_IN_CORE | {"benchmarks"}
#: The TorchServe adapter: the only modules that may import ``ts``.
TORCHSERVE_ADAPTER = {"serving/handler.py", "serving/server.py", "serving/torchserve_entry.py"}
#: What a client-only install has (pyproject's base dependencies and the [client] extra), and
#: the modules it imports: their module-level imports, followed through the repository, must
#: stay within it.
CLIENT_MODULES = ("serving.client", "serving.schema", "serving.proto_codec", "serving.keys")
CLIENT_THIRD_PARTY = {"numpy", "pydantic", "requests", "grpc", "google"}


def python_files(root: Path) -> Iterator[Path]:
    yield from sorted(p for p in root.rglob("*.py") if "grpc_stubs" not in p.parts)


def imported_modules(path: Path, module_level_only: bool = False) -> set[str]:
    """Absolute module names imported by ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
    nodes = tree.body if module_level_only else ast.walk(tree)
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.add(module)
            names |= {f"{module}.{alias.name}" for alias in node.names}
    return names


def top_level(names: set[str]) -> set[str]:
    return {name.split(".")[0] for name in names if name}


@pytest.mark.parametrize(
    "path", list(python_files(CORE)), ids=lambda p: str(p.relative_to(REPO_ROOT))
)
def test_core_imports_neither_subprojects_nor_torchserve_nor_the_cli(path: Path) -> None:
    forbidden = top_level(imported_modules(path)) & NOT_IN_CORE
    assert not forbidden, f"{path.relative_to(REPO_ROOT)} imports {sorted(forbidden)}"


def test_core_tests_import_only_the_core() -> None:
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(
            top_level(imported_modules(path)) & NOT_IN_CORE_TESTS
        )
        for path in python_files(CORE_TESTS)
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_only_the_torchserve_adapter_imports_ts() -> None:
    importing = {
        str(path.relative_to(REPO_ROOT))
        for root in ("trustgc", "trustgc_cli", "training", "serving")
        for path in python_files(REPO_ROOT / root)
        if "ts" in top_level(imported_modules(path))
    }
    assert importing <= TORCHSERVE_ADAPTER, sorted(importing - TORCHSERVE_ADAPTER)


def _module_path(module: str) -> Path | None:
    base = REPO_ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_client_side_modules_need_only_the_client_extra() -> None:
    """The imports a client install runs (module level, followed through first-party modules)
    reach no third-party package beyond the base dependencies and the [client] extra."""
    import sys

    seen: set[str] = set()
    third_party: dict[str, str] = {}
    todo = list(CLIENT_MODULES)
    while todo:
        module = todo.pop()
        path = _module_path(module)
        if module in seen or path is None:
            continue
        seen.add(module)
        for name in imported_modules(path, module_level_only=True):
            top = name.split(".")[0]
            if top in {"serving", "trustgc", "training", "trustgc_cli"}:
                todo.append(name)
                parent = name.rsplit(".", 1)[0]
                todo.append(parent)  # `from a.b import c`: c may be a name in a.b
            elif top not in sys.stdlib_module_names and top != "__future__":
                third_party.setdefault(top, module)
    extra = {top: by for top, by in third_party.items() if top not in CLIENT_THIRD_PARTY}
    assert not extra, f"client-side imports beyond the [client] extra: {extra}"
    assert not {m for m in seen if m.split(".")[0] in {"trustgc", "training"}}, sorted(seen)
