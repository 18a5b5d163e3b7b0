"""No test imports code from ``scripts/``: a script is a thin command line over a module, and tests test the module
(or run the script as a user runs it, in a subprocess). Checked on the syntax tree of every ``tests/*.py``:
``import`` and ``from`` statements naming that folder's package, and calls that load a file or put a folder on the
import path (``sys.path.insert/append``, ``importlib.util.spec_from_file_location``, ``importlib.import_module``,
``runpy.run_path/run_module``, ``SourceFileLoader``) whose arguments mention ``scripts``."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PATH_EDITS = {"insert", "append", "extend"}  # of sys.path
LOADERS = {"spec_from_file_location", "import_module", "run_path", "run_module", "SourceFileLoader", "load_source"}


def _name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _edits_sys_path(func: ast.expr) -> bool:
    """``sys.path.insert`` / ``append`` / ``extend`` (or ``path.insert`` after ``from sys import path``)."""
    return isinstance(func, ast.Attribute) and func.attr in PATH_EDITS and _name(func.value) == "path"


def _mentions_scripts(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and "scripts" in sub.value:
            return True
        if isinstance(sub, ast.Name | ast.Attribute) and "scripts" in _name(sub).lower():
            return True
    return False


def scripts_imports(source: str) -> list[tuple[int, str]]:
    """(line, what) for every import of ``scripts/`` code in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}") for a in node.names if a.name.split(".")[0] == "scripts"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "scripts":
            found.append((node.lineno, f"from {node.module} import ..."))
        elif isinstance(node, ast.Call) and (_name(node.func) in LOADERS or _edits_sys_path(node.func)):
            if any(_mentions_scripts(arg) for arg in [*node.args, *(k.value for k in node.keywords)]):
                found.append((node.lineno, f"{_name(node.func)}(... scripts ...)"))
    return found


def test_the_check_finds_each_way_of_importing_a_script():
    # the folder's name is filled in at run time, so that this file itself holds no import of it to find
    bad = """
import sys, importlib.util, importlib, runpy
from pathlib import Path
ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "{pkg}"))
sys.path.append(str(ROOT / "{pkg}"))
spec = importlib.util.spec_from_file_location("x", ROOT / "{pkg}" / "make_tables.py")
main = runpy.run_path(str(ROOT / "{pkg}" / "inspect_checkpoint.py"))["main"]
mod = importlib.import_module("{pkg}.benchmark")
import {pkg}.benchmark
from {pkg} import gpu_check
SCRIPTS = ROOT / "{pkg}"
sys.path.insert(0, str(SCRIPTS))
""".format(pkg="scripts")
    lines = [line for line, _ in scripts_imports(bad)]
    assert set(lines) == {5, 6, 7, 8, 9, 10, 11, 13}
    fine = """
import subprocess, sys
from pathlib import Path
ROOT = Path(__file__).parents[1]
subprocess.run([sys.executable, str(ROOT / "{pkg}" / "benchmark.py"), "--help"])  # run as a user runs it
sys.path.insert(0, str(ROOT))
from evaluation.tables import main
""".format(pkg="scripts")
    assert scripts_imports(fine) == []


def test_no_test_imports_scripts():
    offenders = [
        f"{path.name}:{line}: {what}"
        for path in sorted(TESTS.glob("*.py"))
        for line, what in scripts_imports(path.read_text(encoding="utf-8"))
    ]
    assert offenders == [], "tests import scripts/ (test the module the script calls instead):\n" + "\n".join(offenders)
