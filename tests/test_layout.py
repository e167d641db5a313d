"""The package layout the README's module table describes: stages import one way."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import PROJECT

PACKAGE = PROJECT / "cxr_tf"
BASE = {"cxr_tf", "cxr_tf.labels", "cxr_tf.config"}  # shared by every stage
STAGES = ("data", "modeling", "training", "evaluation", "serving")
# Each stage may import the stages before it on the path convert -> fit -> evaluate -> export,
# and these besides: the validation AUROC of training (plain NumPy, no cycle) and the
# command-line formatter the tuner writes its retrain command with.
EXTRA = {"training": {"cxr_tf.evaluation.metrics", "cxr_tf.cli"}}
COMMANDS = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "labels", "config", "cli"}


def _imports(path: Path) -> set[str]:
    """Every cxr_tf module a file imports, at any depth (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cxr_tf"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                module = candidate if _is_module(candidate) else node.module
                found.add(module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cxr_tf")}
    return found


def _is_module(dotted: str) -> bool:
    relative = Path(*dotted.split("."))
    return (PROJECT / relative).with_suffix(".py").exists() or (PROJECT / relative).is_dir()


def test_stages_import_only_the_stages_before_them():
    wrong = []
    for index, stage in enumerate(STAGES):
        allowed = {f"cxr_tf.{s}" for s in STAGES[: index + 1]}
        for path in sorted((PACKAGE / stage).glob("*.py")):
            for module in _imports(path):
                ok = (
                    module in BASE
                    or module in EXTRA.get(stage, set())
                    or any(module == a or module.startswith(a + ".") for a in allowed)
                )
                if not ok:
                    wrong.append(f"{path.relative_to(PROJECT)} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_library_imports_no_command_and_the_base_no_stage():
    library = [p for s in STAGES for p in (PACKAGE / s).glob("*.py")]
    base = [PACKAGE / "labels.py", PACKAGE / "config.py", PACKAGE / "cli.py"]
    commands = {f"cxr_tf.{c}" for c in COMMANDS}
    wrong = [
        f"{p.relative_to(PROJECT)} imports {m}"
        for p in library + base
        for m in _imports(p)
        if m in commands or (p in base and m.split(".")[1:2] and m.split(".")[1] in STAGES)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_readme_module_table_lists_every_module():
    readme = (PROJECT / "README.md").read_text()
    table = readme[readme.index("| where | module | concern |") :].split("\n\n")[0]
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

    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PROJECT).with_suffix("").parts
        importlib.import_module(".".join(p for p in parts if p != "__init__"))
