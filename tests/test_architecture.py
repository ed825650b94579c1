"""The layout docs/architecture.md describes is the layout the code has: its table of packages is
read here and every import in the package is checked against it, with the rules that go with it
(MLflow only in tracking, core free of click and printing, no private names across modules or of
other libraries). The fast CLI is checked in a fresh interpreter (compare, run for real without
torch: tests/test_compare.py)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "cifar_mlflow"
DOC = PROJECT_ROOT / "docs" / "architecture.md"
TOP_LEVEL = {"cli.py": "cli", "__main__.py": "cli", "options.py": "options"}
MLFLOW_ALLOWED = {"tracking", "testing"}  # the one MLflow layer, and the tests' helpers


def layers() -> dict[str, tuple[str, set[str]]]:
    """{package: (what it holds, packages it may import)} from the doc's table."""
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \| (.+?) \|$", DOC.read_text(), re.MULTILINE)
    return {
        name: (holds, set() if below.strip() == "—" else {p.strip() for p in below.split(",")})
        for name, holds, below in rows
    }


def package_of(path: Path) -> str | None:
    relative = path.relative_to(PACKAGE)
    if len(relative.parts) == 1:
        return TOP_LEVEL.get(relative.name)  # None: the root __init__.py
    return relative.parts[0]


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


@dataclass(frozen=True)
class Import:
    module: str  # absolute
    names: tuple[str, ...]
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`


def module_name(path: Path) -> str:
    """`cifar_mlflow.core.data` for cifar_mlflow/core/data.py; a file outside the project is
    named by its stem."""
    if not path.is_relative_to(PROJECT_ROOT):
        return path.stem
    dotted = ".".join(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    return dotted.removesuffix(".__init__")


def imports(path: Path, top_level_only: bool = False) -> list[Import]:
    """The imports of a module (all of them, or those at module level only)."""
    tree = ast.parse(path.read_text())
    dotted = module_name(path)
    here = dotted if path.name == "__init__.py" else dotted.rpartition(".")[0]
    type_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for node in ast.walk(statement)
    }
    found = []
    for node in tree.body if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(alias.name, (), node.lineno, id(node) in type_only))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            names = tuple(a.name for a in node.names)
            found.append(Import(base, names, node.lineno, id(node) in type_only))
    return found


def internal_package(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "cifar_mlflow" or len(parts) == 1:
        return None
    return TOP_LEVEL.get(parts[1] + ".py", parts[1])


def test_the_doc_lists_every_package_and_module():
    documented = layers()
    packages = {package_of(p) for p in modules()} - {None}
    assert set(documented) == packages
    for path in modules():
        if path.name != "__init__.py" and package_of(path):
            holds, _ = documented[package_of(path)]
            assert f"`{path.name}`" in holds, f"{path.relative_to(PROJECT_ROOT)} is not in {DOC}"


def test_every_import_goes_to_a_layer_below_or_the_same_package():
    documented = layers()
    broken = []
    for path in modules():
        package = package_of(path)
        if package is None:
            continue
        allowed = documented[package][1] | {package}
        for found in imports(path):
            target = internal_package(found.module)
            if found.module == "cifar_mlflow":  # e.g. `from cifar_mlflow import __version__`
                target = {TOP_LEVEL.get(f"{n}.py", n) for n in found.names} - {"__version__"}
                target = next(iter(target), None)
            if target and target not in allowed:
                broken.append(f"{path.relative_to(PROJECT_ROOT)}:{found.line} {package} -> {target}")
    assert broken == []


def test_mlflow_is_imported_only_by_the_tracking_layer():
    outside = [
        f"{path.relative_to(PROJECT_ROOT)}:{found.line}"
        for path in modules()
        if package_of(path) not in MLFLOW_ALLOWED
        for found in imports(path)
        if found.module.split(".")[0] == "mlflow" and not found.type_only
    ]
    assert outside == []


def test_core_knows_no_click_and_prints_nothing():
    for path in (PACKAGE / "core").glob("*.py"):
        tree = ast.parse(path.read_text())
        assert {i.module.split(".")[0] for i in imports(path)} & {"click", "tqdm", "mlflow"} == set()
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "print" not in calls, path
        streams = {ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not streams & {"sys.stdout", "sys.stderr"}, path


def private_uses(path: Path) -> list[str]:
    """`from m import _x`, `import a._b`, and `obj._x` where obj is not self or cls."""
    tree = ast.parse(path.read_text())
    where = path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path.name
    found = [
        f"{where}:{i.line} imports {name} from {i.module}"
        for i in imports(path)
        for name in (*i.names, *i.module.split("."))
        if name.startswith("_") and not name.startswith("__")
    ]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                found.append(f"{where}:{node.lineno} uses {ast.unparse(node)}")
    return found


def test_no_module_uses_another_modules_or_librarys_private_names():
    checked = [*modules(), *(PROJECT_ROOT / "entrypoints").glob("*.py"), *(PROJECT_ROOT / "bench").glob("*.py")]
    assert [use for path in checked for use in private_uses(path)] == []


def test_the_private_name_check_catches_what_it_is_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from mlflow.utils.validation import _validate_model_alias_name\n"
        "import torch._dynamo\n"
        "def f(option, self):\n    return option._flag_needs_value, self._fine\n"
    )
    uses = private_uses(sample)
    assert len(uses) == 3, uses  # the import, the private module, the attribute; not self._fine


def internal_modules(path: Path) -> set[str]:
    """The package's modules that `path` imports anywhere (inside functions too), but under
    TYPE_CHECKING: `from . import x` names module x, `from .x import y` module x."""
    known = {module_name(p) for p in modules()}
    found = set()
    for i in imports(path):
        if i.type_only or not i.module.startswith("cifar_mlflow"):
            continue
        named = {f"{i.module}.{n}" for n in i.names} & known
        found |= named or ({i.module} & known)
    return found - {module_name(path)}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            if component:
                found.append(sorted([node, *component]))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_two_modules_import_each_other():
    graph = {module_name(p): internal_modules(p) for p in modules()}
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle_through_three_modules():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def light_modules() -> list[Path]:
    """The modules docs/architecture.md lets a command.py import at module level."""
    line = re.search(r"^Light modules: (.+?)\.$", DOC.read_text(), re.MULTILINE | re.DOTALL)
    return sorted(PACKAGE / path for path in re.findall(r"`([\w/]+\.py)`", line[1]))


@pytest.mark.parametrize(
    "path", sorted({*PACKAGE.glob("*/command.py"), *light_modules()}),
    ids=lambda p: p.relative_to(PACKAGE).as_posix(),
)  # fmt: skip
def test_command_modules_import_only_light_modules_at_module_level(path):
    light = {module_name(p) for p in light_modules()}
    allowed = {"click", "yaml"} | set(sys.stdlib_module_names)
    heavy = [
        found.module for found in imports(path, top_level_only=True)
        if not found.type_only and found.module.split(".")[0] not in allowed
        and not ({found.module} | {f"{found.module}.{n}" for n in found.names}) & light
    ]  # fmt: skip
    assert heavy == [], f"{path.relative_to(PROJECT_ROOT)} imports {heavy} at module level"


def test_entry_points_are_one_line_of_delegation():
    for path in (PROJECT_ROOT / "entrypoints").glob("*.py"):
        tree = ast.parse(path.read_text())
        [imported] = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
        assert (imported.module, [a.name for a in imported.names]) == (
            "cifar_mlflow.cli", ["mlproject_entry_point"]
        ), path
        [guard] = [n for n in tree.body if isinstance(n, ast.If)]
        [call] = guard.body
        assert ast.unparse(call) == f"mlproject_entry_point({path.stem!r})", path


def test_benchmarks_do_not_import_the_tests():
    for path in (PROJECT_ROOT / "bench").glob("*.py"):
        assert not [i for i in imports(path) if i.module.split(".")[0] == "tests"], path


def loaded_by(code: str) -> set[str]:
    """Top-level packages a fresh interpreter has imported after running `code`."""
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True, cwd=PROJECT_ROOT,
    )  # fmt: skip
    return {name.split(".")[0] for name in out.stdout.split()}


@pytest.mark.parametrize("command", ["", "train", "compare", "sweep", "export", "predict"])
def test_help_loads_neither_torch_nor_mlflow(command):
    args = [command, "--help"] if command else ["--help"]
    code = (
        "import contextlib, io\nfrom cifar_mlflow.cli import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    cli({args!r}, prog_name='cifar-mlflow')"
    )
    assert loaded_by(code) & {"torch", "mlflow"} == set()


def test_runs_are_opened_only_by_the_lifecycle():
    """Every command's run goes through tracking.runs.tracked_run, so each ends FINISHED, FAILED
    or KILLED the same way (a sweep's children are created SCHEDULED by tracking.sweeps, and
    attach to the lifecycle in their own `train` process)."""
    openers = {"start_run": {"tracking/runs.py"}, "create_run": {"tracking/sweeps.py"}}
    for path in modules():
        where = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in openers:
                assert where in openers[node.attr] or package_of(path) == "testing", (where, node.attr)


def test_every_library_the_package_imports_is_a_declared_dependency():
    import importlib.metadata

    import tomllib

    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=\[ ;]", d)[0].lower() for d in project["dependencies"]}
    optional = {
        re.split(r"[<>=\[ ;]", d)[0].lower() for extra in project["optional-dependencies"].values()
        for d in extra
    }  # fmt: skip
    distributions = importlib.metadata.packages_distributions()
    missing = set()
    for path in modules():
        if package_of(path) == "testing":
            continue
        for found in imports(path):
            top = found.module.split(".")[0]
            if top in sys.stdlib_module_names or top == "cifar_mlflow" or found.type_only:
                continue
            names = {d.lower() for d in distributions.get(top, [top])}
            if not names & (declared | optional):
                missing.add(f"{top} ({path.relative_to(PROJECT_ROOT)})")
    assert missing == set()
