"""The package layout docs/architecture.md describes: layers import one way, no cycles.

Read statically (the syntax tree of every module), so that imports inside functions count
as much as those at the top: a lazy import still ties two modules together.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

from helpers import PROJECT

PACKAGE = PROJECT / "cxr_tf"
# Lowest first; a module imports only modules of its own layer or of the layers below it.
# `base` is the package's top-level shared modules (below); `commands` are the other
# top-level modules (`python -m cxr_tf.<command>`); the rest are the folders.
LAYERS = (
    "base",
    "sources",
    "synthetic",
    "data",
    "analysis",
    "modeling",
    "runs",
    "training",
    "evaluation",
    "serving",
    "benchmarks",
    "commands",
)
BASE = {
    "cxr_tf",
    "cxr_tf.labels",
    "cxr_tf.config",
    "cxr_tf.recipes",
    "cxr_tf.cli",
    "cxr_tf.progress",
    "cxr_tf.testing",  # the test-only seams, see test_test_hooks_live_in_one_seam
}
# The modules of cxr_tf/sources/ that name no particular source; every other module there
# is one source, which only the registry imports.
SOURCE_NEUTRAL = {"__init__", "base", "catalog", "images", "dicom", "registry"}
SOURCE_NAMES = re.compile("chexpert|mimic|padchest|vindr|rsna", re.IGNORECASE)
# Outside sources/ and synthetic/, the only modules whose code (not docstrings or
# comments) names a particular source, and why.
SOURCE_NAMES_ALLOWED = {
    "cxr_tf/demo.py": "its external step evaluates on a CheXpert-style imitation, by name",
}
# The only modules that read or set environment variables, and what for.
ENVIRONMENT = {
    "cxr_tf/__init__.py": "CXR_TF_VERBOSE and the TensorFlow log level it implies",
    "cxr_tf/predict.py": "TensorFlow's log level, set before TensorFlow starts",
    "cxr_tf/training/distribute.py": "TF_CONFIG, TensorFlow's multi-worker cluster",
    "cxr_tf/training/tuning.py": "KERASTUNER_*, keras-tuner's distributed tuning",
    "cxr_tf/testing.py": "the test-only seams (CXR_TF_CHECK_ARGS, CXR_TF_FAULT_AT)",
    "cxr_tf/progress.py": "CXR_TF_LOG_SECONDS, the period of progress lines in log files",
}
SEAM = "cxr_tf/testing.py"
# CXR_TF_* variables that are settings, not test hooks
USER_VARIABLES = {"CXR_TF_VERBOSE", "CXR_TF_LOG_SECONDS"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT).with_suffix("").parts
    return ".".join(p for p in parts if p != "__init__")


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _rel(path: Path) -> str:
    return str(path.relative_to(PROJECT))


def _layer(module: str) -> str:
    parts = module.split(".")
    if module in BASE or ".".join(parts[:2]) in BASE:  # cxr_tf.config.* too
        return "base"
    if len(parts) > 2 or (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "commands"


def _is_module(dotted: str) -> bool:
    return dotted in MODULES


def _imports(path: Path) -> dict[str, int]:
    """Every cxr_tf module a file imports, at any depth (lazy imports included), with the
    line of its first import. `from P import x` counts as importing P.x when that is a
    module, else P; `importlib.import_module("cxr_tf...")` and `lazy_import(...)` count."""
    found: dict[str, int] = {}
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent)
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: resolved against the file's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{module}" if module else base
            if module.split(".")[0] == "cxr_tf":
                for alias in node.names:
                    candidate = f"{module}.{alias.name}"
                    names.append(candidate if _is_module(candidate) else module)
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "cxr_tf"]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if (
                called in ("import_module", "lazy_import")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and first.value.split(".")[0] == "cxr_tf"
            ):
                names = [first.value]
        for name in names:
            found.setdefault(name, node.lineno)
    return found


GRAPH = {module: _imports(path) for module, path in MODULES.items()}


def test_each_layer_imports_only_itself_and_the_layers_below():
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    wrong = [
        f"{_rel(MODULES[module])}:{line} ({_layer(module)}) imports {target} ({_layer(target)})"
        for module, targets in GRAPH.items()
        for target, line in sorted(targets.items())
        if rank[_layer(target)] > rank[_layer(module)]
    ]
    assert not wrong, "\n".join(wrong)


# Pairs of layers where the upper one, though above, imports nothing of the lower one:
# evaluation and serving read a run through its folder format (runs/), not through training.
SIDEWAYS = {("evaluation", "training"), ("serving", "training")}


def test_evaluation_and_serving_read_runs_not_training():
    wrong = [
        f"{_rel(MODULES[module])}:{line} imports {target}"
        for module, targets in GRAPH.items()
        for target, line in sorted(targets.items())
        if (_layer(module), _layer(target)) in SIDEWAYS
    ]
    assert not wrong, "\n".join(wrong)


def test_only_commands_import_commands_and_the_command_line():
    commands = {m for m in MODULES if _layer(m) == "commands"} | {"cxr_tf.cli"}
    wrong = [
        f"{_rel(MODULES[module])}:{line} imports {target}"
        for module, targets in GRAPH.items()
        if _layer(module) != "commands" and module != "cxr_tf.cli"
        for target, line in sorted(targets.items())
        if target in commands
    ]
    assert not wrong, "\n".join(wrong)


def _components(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """The strongly connected components of more than one module, or of one that imports
    itself: the modules tied together by import cycles (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the package's size
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (first module repeated at the end) per component of `_components`."""
    return [_a_cycle(graph, component) for component in _components(graph)]


def _a_cycle(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """The shortest cycle through the component's first module (breadth-first)."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for target in sorted(graph[node]):
            if target == start:
                return [*paths[node], start]
            if target in component and target not in paths:
                paths[target] = [*paths[node], target]
                queue.append(target)
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def _describe(cycle: list[str]) -> str:
    steps = [
        f"{_rel(MODULES[a])}:{GRAPH[a][b]} imports {b}"
        for a, b in zip(cycle, cycle[1:], strict=False)
    ]
    return " -> ".join(cycle) + "\n    " + "\n    ".join(steps)


def test_no_import_cycle_anywhere():
    found = [
        f"{len(component)} modules tied by imports ({', '.join(sorted(component))}), e.g. "
        + _describe(_a_cycle(GRAPH, component))
        for component in _components(GRAPH)
    ]
    assert not found, "import cycles:\n" + "\n".join(found)


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1, "d": 1}, "d": {}, "e": {"e": 1}}
    assert _cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert _cycles({"a": {"b": 1}, "b": {}}) == []


def _source_modules() -> set[str]:
    return {
        f"cxr_tf.sources.{p.stem}"
        for p in (PACKAGE / "sources").glob("*.py")
        if p.stem not in SOURCE_NEUTRAL
    }


def test_sources_are_reached_through_the_registry():
    """Outside sources/ and synthetic/ no module imports a particular source's module; inside
    sources/ only the registry does (shared helpers live in the neutral modules)."""
    sources = _source_modules()
    assert {"cxr_tf.sources.nih", "cxr_tf.sources.chexpert"} <= sources
    wrong = [
        f"{_rel(MODULES[module])}:{line} imports {target}"
        for module, targets in GRAPH.items()
        if _layer(module) != "synthetic" and module != "cxr_tf.sources.registry"
        for target, line in sorted(targets.items())
        if target in sources and target != module
    ]
    assert not wrong, "\n".join(wrong)


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _code_words(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, text) of every identifier and string literal, docstrings left out."""
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        words: list[str | None] = []
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            words = [] if id(node) in docstrings else [node.value]
        elif isinstance(node, ast.Name):
            words = [node.id]
        elif isinstance(node, ast.Attribute):
            words = [node.attr]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            words = [node.name]
        elif isinstance(node, ast.arg):
            words = [node.arg]
        elif isinstance(node, ast.keyword):
            words = [node.arg]
        elif isinstance(node, ast.alias):
            words = [node.name, node.asname]
        elif isinstance(node, ast.ImportFrom):
            words = [node.module]
        for word in words:
            if word:
                yield getattr(node, "lineno", 0), word


def test_no_source_is_named_outside_its_module():
    """`chexpert`, `mimic`, `padchest` appear in code only in sources/ and synthetic/ (and
    the short list above); docstrings and comments may name them."""
    wrong = []
    for module, path in MODULES.items():
        if _layer(module) in ("sources", "synthetic") or _rel(path) in SOURCE_NAMES_ALLOWED:
            continue
        for line, word in _code_words(ast.parse(path.read_text())):
            if SOURCE_NAMES.search(word):
                wrong.append(f"{_rel(path)}:{line}: {word[:60]!r}")
    assert not wrong, "\n".join(wrong)


def _environment_uses(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "os" and node.attr in ("environ", "getenv", "putenv", "_exit"):
                yield node.lineno, f"os.{node.attr}"
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            for alias in node.names:
                if alias.name in ("environ", "getenv", "putenv", "_exit"):
                    yield node.lineno, f"os.{alias.name}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith("CXR_TF_") and node.value not in USER_VARIABLES:
                yield node.lineno, node.value


def test_test_hooks_live_in_one_seam():
    """Test-only hooks (environment switches, ending the process from inside) are in
    cxr_tf/testing.py only; the other modules that read the environment are listed above
    with what they read."""
    wrong = []
    for path in MODULES.values():
        for line, use in _environment_uses(ast.parse(path.read_text())):
            hook = use == "os._exit" or use.startswith("CXR_TF_")
            if (hook and _rel(path) != SEAM) or (not hook and _rel(path) not in ENVIRONMENT):
                wrong.append(f"{_rel(path)}:{line}: {use}")
    assert not wrong, "\n".join(wrong)
    assert len((PROJECT / SEAM).read_text().splitlines()) < 60, "the seam stays small"


def test_the_module_table_lists_every_module():
    doc = (PROJECT / "docs" / "architecture.md").read_text()
    table = doc[doc.index("| where | module | concern |") :].split("\n\n")[0]
    listed, folder = set(), ""
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        folder = cells[0].strip("`") or folder
        for name in cells[1].split(","):
            name = name.strip().strip("`")
            if name.endswith("/"):  # a data folder: its files, its __init__.py loader
                assert (PACKAGE.parent / folder / name).is_dir(), name
                continue
            listed.add(folder + name)
    actual = {
        str(p.relative_to(PROJECT)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"
    }
    assert listed == actual


def test_every_module_imports():
    import importlib

    for module in MODULES:
        importlib.import_module(module)
