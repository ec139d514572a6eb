"""Every mmgpt module imports on its own, the import graph has no cycle, and the metric modules stay pure."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_packaging import load_setup

METRIC_MODULES = ("mmgpt.eval.vqa_metrics", "mmgpt.eval.caption_metrics")
# what a metric must not depend on: the generation runner, the eval scripts, the model and inference
NOT_FOR_METRICS = ("mmgpt.eval.runner", "mmgpt.eval.common", "mmgpt.eval.vqa", "mmgpt.eval.caption",
                   "mmgpt.model", "mmgpt.inference", "torch")

# imports every module of the packages named in argv (a package's own modules, not its subpackages)
LIST_MODULES = """
import importlib, json, pkgutil, sys
files = {}
for package in sys.argv[1:]:
    files[package] = importlib.import_module(package).__file__
    for module in pkgutil.iter_modules(sys.modules[package].__path__, package + "."):
        if not module.ispkg:
            files[module.name] = importlib.import_module(module.name).__file__
print(json.dumps(files))
"""
ROOT = Path(__file__).resolve().parent.parent


def fresh_python(code: str, *args: str, cwd: Path | None = None) -> str:
    """stdout of `code` run in a new interpreter (nothing imported by this test process leaks in)."""
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _outside_main_and_type_checking(node: ast.AST) -> list[ast.AST]:
    """Statements under `node`, without `if __name__ == "__main__":` and `if TYPE_CHECKING:` bodies."""
    found = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If):
            test = ast.unparse(child.test)
            if test.startswith("__name__") or test.endswith("TYPE_CHECKING"):
                found.extend(n for c in child.orelse for n in [c, *_outside_main_and_type_checking(c)])
                continue
        found.append(child)
        found.extend(_outside_main_and_type_checking(child))
    return found


def import_graph(files: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its file (function bodies included)."""
    graph: dict[str, set[str]] = {}
    for name, file in files.items():
        package = name if file.endswith("__init__.py") else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _outside_main_and_type_checking(ast.parse(Path(file).read_text())):
            if isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parent + ([base] if base else []))
                wanted = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            else:
                continue
            for target in wanted:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                # a module's own packages are imported before it and are not a cycle through it
                if target and target != name and not name.startswith(target + "."):
                    targets.add(target)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle [a, b, ..., a], or [] when the graph has none."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


@pytest.fixture(scope="module")
def mmgpt_files() -> dict[str, str]:
    return json.loads(fresh_python(LIST_MODULES, *load_setup().mmgpt_packages()))


@pytest.mark.slow
def test_every_module_imports_in_a_fresh_interpreter(mmgpt_files: dict[str, str]) -> None:
    assert {"mmgpt.model", "mmgpt.inference", "mmgpt.eval.runner", *METRIC_MODULES} <= set(mmgpt_files)
    assert "mmgpt.fusion.cross_attention" in mmgpt_files and "mmgpt.encoders" in mmgpt_files


@pytest.mark.slow
def test_no_import_cycle_among_mmgpt_modules(mmgpt_files: dict[str, str]) -> None:
    assert find_cycle(import_graph(mmgpt_files)) == []


def test_a_cycle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from cyclic.b import helper\n")
    (package / "b.py").write_text("def helper():\n    from . import a\n")
    (package / "c.py").write_text("import cyclic.a\nif __name__ == '__main__':\n    import cyclic.c\n")
    files = json.loads(fresh_python(LIST_MODULES, "cyclic", cwd=tmp_path))
    graph = import_graph(files)
    assert graph["cyclic.c"] == {"cyclic.a"}
    assert find_cycle(graph) == ["cyclic.a", "cyclic.b", "cyclic.a"]


@pytest.mark.slow
@pytest.mark.parametrize("metric_module", METRIC_MODULES)
def test_metric_modules_import_nothing_of_the_runner_model_or_inference(metric_module: str,
                                                                        mmgpt_files: dict[str, str]) -> None:
    loaded = json.loads(fresh_python(f"import json, sys, {metric_module}; print(json.dumps(sorted(sys.modules)))"))
    assert metric_module in loaded
    assert [name for name in NOT_FOR_METRICS if name in loaded] == []
    # function-level imports too, which only a call would load
    assert reachable(import_graph(mmgpt_files), metric_module).isdisjoint(NOT_FOR_METRICS)


# dependencies point down: (modules, what they must not import, whether through other modules neither);
# function-level imports count
BOUNDARIES = [
    ("mmgpt.data", ("mmgpt.training", "mmgpt.cli", "mmgpt.eval", "mmgpt.serve", "mmgpt.compare"), True),
    ("mmgpt.eval", ("mmgpt.training", "mmgpt.cli", "mmgpt.serve", "mmgpt.compare"), True),
    ("mmgpt.model", ("mmgpt.serve", "mmgpt.training", "mmgpt.cli"), True),
    # the composition itself; reading a quantised folder is the model folder's (mmgpt.model_folder) business
    ("mmgpt.model", ("mmgpt.compress",), False),
]


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def test_the_package_list_is_the_distributions(mmgpt_files: dict[str, str]) -> None:
    # setup.py's discovery, so a new subpackage is checked without being named here
    assert {"mmgpt.compress.int8", "mmgpt.data.spec", "mmgpt.model_folder", "mmgpt.serve.app"} <= set(mmgpt_files)


@pytest.mark.parametrize(("layer", "above", "through_others"), BOUNDARIES,
                         ids=[f"{layer}-{above[0]}" for layer, above, _ in BOUNDARIES])
def test_a_layer_imports_nothing_above_it(layer: str, above: tuple[str, ...], through_others: bool,
                                          mmgpt_files: dict[str, str]) -> None:
    graph = import_graph(mmgpt_files)
    modules = [module for module in graph if _within(module, (layer,))]
    assert modules
    imported = {module: reachable(graph, module) if through_others else graph[module] for module in modules}
    assert {module: sorted(t for t in targets if _within(t, above)) for module, targets in imported.items()
            if any(_within(t, above) for t in targets)} == {}


@pytest.mark.slow
def test_importing_the_inference_and_training_code_prints_nothing() -> None:
    # torchao (pulled in by transformers when installed) made torch warn on every command's import
    proc = subprocess.run([sys.executable, "-c", "import mmgpt.inference, mmgpt.training.loop"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "" and proc.stdout == ""
