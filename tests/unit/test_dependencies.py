"""The deployed function never imports the tools' dependencies (rich), and they stay out of requirements.txt.

The function is main.py and every handlers module .gcloudignore uploads: all of handlers/ except
the operator CLI (handlers/cli/, handlers/__main__.py). Imports are read from the source (lazy ones
inside functions included) and checked by importing the whole deployed tree in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS_ONLY = ("rich",)
CLI = ("handlers.cli", "handlers.__main__")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def deployed_modules() -> dict[str, Path]:
    """main.py and every handlers module outside the CLI (what .gcloudignore uploads)."""
    modules = {"main": REPO / "main.py"}
    for path in sorted((REPO / "handlers").rglob("*.py")):
        name = module_name(path)
        if not any(name == cli or name.startswith(cli + ".") for cli in CLI):
            modules[name] = path
    return modules


def imported_names(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` anywhere in the file names."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _is(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_deployed_tree_is_main_and_handlers_without_the_cli():
    modules = deployed_modules()
    assert {"main", "handlers.entrypoints", "handlers.exports.job", "handlers.batch.driver"} <= set(modules)
    assert not [name for name in modules if _is(name, "handlers.cli")]
    assert "handlers.cli.terminal" in {module_name(p) for p in (REPO / "handlers" / "cli").glob("*.py")}


def test_no_deployed_module_imports_a_tools_only_package_or_the_cli():
    offending = {
        name: sorted(found for found in imported_names(path)
                     if any(_is(found, package) for package in (*TOOLS_ONLY, *CLI)))
        for name, path in deployed_modules().items()
    }
    assert {name: found for name, found in offending.items() if found} == {}


def test_importing_every_deployed_module_loads_no_tools_only_package():
    modules = sorted(deployed_modules())
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {TOOLS_ONLY!r}))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_cli_reaches_rich_only_through_handlers_cli_terminal():
    users = sorted(module_name(path) for path in (REPO / "handlers" / "cli").glob("*.py")
                   if any(_is(found, "rich") for found in imported_names(path)))
    assert users == ["handlers.cli.terminal"]


def requirement_names(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line.split("==")[0].lower() for line in lines if line and not line.startswith("-r")]


def test_rich_is_a_pinned_tools_requirement_and_not_the_functions():
    assert not set(TOOLS_ONLY) & set(requirement_names(REPO / "requirements.txt"))
    tools = (REPO / "requirements-tools.txt").read_text(encoding="utf-8")
    assert "-r requirements.txt" in tools and "rich==" in tools
    assert "-r requirements-tools.txt" in (REPO / "requirements-dev.txt").read_text(encoding="utf-8")


def pins(path: Path) -> dict[str, str]:
    """``name -> version`` of a requirements or constraints file's ``name==version`` lines (names normalised)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    pairs = (line.split("==", 1) for line in lines if "==" in line)
    return {name.strip().lower().replace("_", "-"): version.strip() for name, version in pairs}


def test_every_pinned_requirement_has_the_same_version_in_the_constraints():
    """make installs requirements-dev.txt with -c constraints.txt: a pin bumped in one file only would not install."""
    constraints = pins(REPO / "constraints.txt")
    for path in sorted(REPO.glob("requirements*.txt")):
        for name, version in pins(path).items():
            assert constraints.get(name) == version, \
                f"{path.name} pins {name}=={version}, constraints.txt {constraints.get(name)}: regenerate constraints.txt"
