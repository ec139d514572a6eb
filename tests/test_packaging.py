"""What a fresh install gets: the README's test command installs every package the code and the tests import,
.ci/run runs exactly the README's commands, and the optional-part helper skips outside CI and fails under it."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import optional
import pytest
import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SOURCES = ["mmgpt", "encoders", "fusion", "bench", "tests", "train.py", "eval_vqa.py", "eval_caption.py"]
# imported from a checkout the user names, never installed: bench/nanovlm_peer.py puts $NANOVLM on sys.path
NOT_INSTALLED = {"models"}


def canonical(name: str) -> str:
    """A distribution's name as the registries compare it."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(extra: str) -> set[str]:
    """Distributions a `pip install .[extra]` asks for on this Python: dependencies and the extra, recursively."""
    names: set[str] = set()
    todo = [*PYPROJECT["project"]["dependencies"], *PYPROJECT["project"]["optional-dependencies"][extra]]
    while todo:
        requirement = Requirement(todo.pop())
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if canonical(requirement.name) == "mmgpt":
            for name in requirement.extras:
                todo.extend(PYPROJECT["project"]["optional-dependencies"][name])
        else:
            names.add(canonical(requirement.name))
    return names


def installed_closure(names: set[str]) -> set[str]:
    """`names` and every distribution they require once installed (what pip brings along)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requirements:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonical(requirement.name))
            # extras named in our own requirements, e.g. ray[serve]
            elif any(requirement.marker.evaluate({"extra": e}) for e in _asked_extras(name)):
                todo.append(canonical(requirement.name))
    return seen


def _asked_extras(distribution: str) -> set[str]:
    """Extras of `distribution` that pyproject.toml asks for."""
    extras: set[str] = set()
    for lines in PYPROJECT["project"]["optional-dependencies"].values():
        for line in lines:
            requirement = Requirement(line)
            if canonical(requirement.name) == distribution:
                extras |= requirement.extras
    return extras


def _guarded(tree: ast.AST) -> set[int]:
    """ids of import nodes inside `try:` bodies that catch ImportError: optional by design."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                h.type is not None and re.search(r"\b(ImportError|ModuleNotFoundError)\b", ast.unparse(h.type))
                for h in node.handlers):
            found |= {id(n) for statement in node.body for n in ast.walk(statement)}
    return found


def third_party_imports() -> dict[str, str]:
    """Top-level module -> a file importing it, for every import outside the standard library and this repository."""
    files = [p for s in SOURCES for p in ((ROOT / s).rglob("*.py") if (ROOT / s).is_dir() else [ROOT / s])]
    local = {p.stem for p in files} | {Path(s).stem for s in SOURCES}
    found: dict[str, str] = {}
    for file in files:
        tree = ast.parse(file.read_text())
        guarded = _guarded(tree)
        for node in ast.walk(tree):
            if id(node) in guarded:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local and top not in NOT_INSTALLED:
                    found.setdefault(top, str(file.relative_to(ROOT)))
    return found


def test_the_test_extra_brings_every_package_the_code_and_the_tests_import() -> None:
    providers = importlib.metadata.packages_distributions()
    brought = installed_closure(declared("test"))
    imports = third_party_imports()
    assert {"torch", "uvicorn", "selenium", "onnxruntime", "matplotlib"} <= set(imports)
    lacking = {module: file for module, file in imports.items()
               if not {canonical(d) for d in providers.get(module, [module])} & brought}
    assert lacking == {}, "imported, but not installed by `pip install -e .[test]` (module: a file importing it)"


def test_the_all_extra_includes_the_test_extra() -> None:
    # the main job's command installs [all]: whoever ran it can run the tests too
    assert declared("test") <= declared("all")


def readme_bash_blocks() -> list[str]:
    """The README's ```bash blocks, in order."""
    return re.findall(r"^```bash\n(.*?)^```$", (ROOT / "README.md").read_text(), re.M | re.S)


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    shown = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--print"], capture_output=True, text=True,
                           timeout=60, cwd=ROOT, check=True).stdout
    test_command = readme_bash_blocks()[1].strip()
    assert 'pip install -e ".[test]"' in test_command and test_command.endswith("python -m pytest -q")
    assert shown.strip() == test_command


def test_an_optional_part_skips_outside_ci_and_fails_under_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs no_such_module_here: pip install it"):
        optional.needs_module("no_such_module_here", "pip install it")
    assert optional.needs_module("json", "stdlib").dumps(1) == "1"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"needs no_such_module_here: pip install it \(a failure under CI"):
        optional.needs_module("no_such_module_here", "pip install it")
