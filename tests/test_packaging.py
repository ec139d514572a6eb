"""What a fresh install gets: the README's test command installs every package the code and the tests import,
.ci/run runs exactly the README's commands, and the optional-part helper skips outside CI and fails under it."""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

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


def test_nothing_imports_the_top_level_folders_that_install_inside_mmgpt() -> None:
    # `import encoders.x` from the checkout is a second copy of mmgpt.encoders.x: its timm models register twice
    nested = set(load_setup().NESTED)
    files = [p for s in SOURCES for p in ((ROOT / s).rglob("*.py") if (ROOT / s).is_dir() else [ROOT / s])]
    found = []
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                     else [])
            found += [f"{file.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in nested]
    assert found == []


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


def load_setup() -> ModuleType:
    """The repository's setup.py as a module (its setup() call runs only as a script)."""
    spec = importlib.util.spec_from_file_location("mmgpt_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_package_folder_is_discovered() -> None:
    packages = load_setup().mmgpt_packages()
    folders = {p.parent for top in ("mmgpt", *load_setup().NESTED) for p in (ROOT / top).rglob("__init__.py")}
    expected = {"mmgpt." + ".".join(f.relative_to(ROOT).parts) if f.parts[len(ROOT.parts)] != "mmgpt"
                else ".".join(f.relative_to(ROOT).parts) for f in folders}
    assert "mmgpt.compress" in packages and "mmgpt.encoders" in packages and "encoders" not in packages
    assert sorted(expected) == packages


# imports every module of the installed mmgpt, checks they come from `site`, and prints each command's --help
INSTALLED_CHECK = """
import contextlib, importlib, importlib.resources, io, json, pkgutil, sys
site, packages = sys.argv[1], json.loads(sys.argv[2])
for package in packages:
    module = importlib.import_module(package)
    assert module.__file__.startswith(site), (package, module.__file__)
    for info in pkgutil.iter_modules(module.__path__, package + "."):
        importlib.import_module(info.name)
assert (importlib.resources.files("mmgpt.configs") / "default.yaml").is_file()
assert (importlib.resources.files("mmgpt.serve") / "static" / "playground.html").is_file()
from mmgpt import cli
for command in cli.COMMANDS:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        cli.main([command, "--help"])
    assert out.getvalue().startswith("usage: mmgpt " + command), (command, out.getvalue()[:300])
print("ok", len(sys.modules))
"""


PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]


def build_wheel(folder: Path) -> Path:
    """The mmgpt wheel, built offline in `folder` from a copy of the checkout's sources (nothing left in it)."""
    for requirement in (Requirement(r) for r in PYPROJECT["build-system"]["requires"]):
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            version = None
        if version is None or not requirement.specifier.contains(version):
            optional.missing(f"needs {requirement} (pyproject's build requirement) to build the wheel offline; "
                             f"found {version}: pip install -e '.[test]'")
    source = folder / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "mmgpt", *load_setup().NESTED):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    proc = subprocess.run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", folder / "dist",
                           source], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (wheel,) = (folder / "dist").glob("mmgpt-*.whl")
    return wheel


@pytest.fixture(scope="session")
def mmgpt_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built once per test session."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def venv_with(folder: Path, wheel: Path, paths: list[str]) -> tuple[Path, Path]:
    """(python, site-packages) of a new virtual environment in `folder` that sees only `paths` and the wheel.

    Directories named in a .pth go on sys.path without the .pth files inside them being run, so an editable
    mmgpt installed where they are stays out.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", folder], check=True, timeout=120)
    python = folder / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text("".join(f"{p}\n" for p in paths))
    proc = subprocess.run([*PIP, "install", "--no-deps", "--no-index", "--target", site, wheel],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return python, site


def clean_env() -> dict[str, str]:
    """This process's environment without the variables that would put other packages on the new one's path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


@pytest.mark.slow
def test_the_wheel_installs_every_package_and_command(mmgpt_wheel: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(mmgpt_wheel) as archive:
        names = archive.namelist()
    assert "mmgpt/compress/quantize.py" in names and "mmgpt/encoders/tiny_cnn.py" in names
    assert not [n for n in names if n.startswith(("encoders/", "fusion/", "configs/", "tests/"))]

    # a fresh environment that sees the dependencies installed here, but not this checkout's editable mmgpt
    python, site = venv_with(tmp_path / "venv", mmgpt_wheel, [p for p in sys.path if p.endswith("site-packages")])
    proc = subprocess.run([python, "-c", INSTALLED_CHECK, str(site), json.dumps(load_setup().mmgpt_packages())],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")
    # the console script pip wrote runs the installed code
    proc = subprocess.run([python, site / "bin" / "mmgpt", "--help"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=clean_env())
    assert proc.returncode == 0 and "compare-fusions" in proc.stdout, proc.stderr[-2000:]
