"""The house rules of docs/ARCHITECTURE.md, checked on the code as it is.

No module of service/, training/ or bench/ imports one that imports it back (directly or
through others; imports under `TYPE_CHECKING` count: they are the same design dependency).
The service's packages only import downwards through the layers the document draws. No module
of service/ is longer than about 400 lines and no function of service/ or training/ longer than
about 80, unless its docstring says why. The service never imports torch.
"""

from __future__ import annotations

import ast
import graphlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import REPO

PACKAGES = ("service", "training", "bench")
MODULE_LINES = 400
FUNCTION_LINES = 80
# The service's layers, lowest first: a module may import its own layer and those below.
LAYERS = (
    {
        "settings",
        "logs",
        "metrics",
        "device",
        "bundle",
        "labels",
        "ranking",
        "validation",
        "storage",
        "database",
        "precision",
        "heap",
    },
    {"astra", "mach"},
    {"search"},
    {"catalog", "batch", "registry"},
    {"api"},
    {"app", "openapi", "__main__"},
)
API_LAYER = 4
# A feature package's HTTP entrypoint (its routes and their bodies) belongs to the API layer.
ENTRYPOINTS = {"routes", "schemas"}


def modules(package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package`."""
    found = {}
    for path in sorted((REPO / package).rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imported(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The project modules that module `name` imports (at any depth of its code)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*kept, *([node.module] if node.module else [])])
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            # A module importing its own package (its __init__) is not a circle.
            if target and target != name and not name.startswith(target + "."):
                yield target


def import_graph() -> dict[str, set[str]]:
    known = {name: path for package in PACKAGES for name, path in modules(package).items()}
    return {name: set(imported(name, path, known)) for name, path in known.items()}


def layer_of(module: str) -> int | None:
    """The layer of a `service.*` module (by its first part below `service`)."""
    parts = module.split(".")
    if parts[0] != "service" or len(parts) < 2:
        return None
    if len(parts) == 3 and parts[1] != "api" and parts[2] in ENTRYPOINTS:
        return API_LAYER
    return next((i for i, layer in enumerate(LAYERS) if parts[1] in layer), None)


def test_no_import_circles() -> None:
    sorter = graphlib.TopologicalSorter(import_graph())
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        pytest.fail(f"import circle: {' -> '.join(exc.args[1])}")


def test_every_service_module_has_a_layer_and_imports_only_downwards() -> None:
    upward = []
    for module, targets in import_graph().items():
        own = layer_of(module)
        if not module.startswith("service."):
            continue
        assert own is not None, f"{module}: not in any layer of LAYERS (docs/ARCHITECTURE.md)"
        for target in targets:
            theirs = layer_of(target)
            if theirs is not None and theirs > own:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports from a higher layer: " + ", ".join(sorted(upward))


def test_service_never_imports_torch() -> None:
    for name, path in modules("service").items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = [node.module.split(".")[0]]
            else:
                continue
            assert "torch" not in roots, f"{name} imports torch"


def says_why(docstring: str | None, limit: int) -> bool:
    """A docstring that explains a length over `limit` names it ("longer than 400 lines")."""
    return docstring is not None and f"longer than {limit}" in docstring


def test_service_modules_stay_short() -> None:
    long = [
        f"{name} ({lines} lines)"
        for name, path in modules("service").items()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MODULE_LINES
        and not says_why(ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))), 400)
    ]
    assert not long, f"modules over {MODULE_LINES} lines with no reason given: {long}"


def test_functions_stay_short() -> None:
    long = []
    for package in ("service", "training"):
        for name, path in modules(package).items():
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                lines = node.end_lineno - node.lineno + 1 if node.end_lineno else 0
                if lines > FUNCTION_LINES and not says_why(ast.get_docstring(node), 80):
                    long.append(f"{name}.{node.name} ({lines} lines)")
    assert not long, f"functions over {FUNCTION_LINES} lines with no reason given: {long}"
