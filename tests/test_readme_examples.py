"""The marked examples of README.md and docs/*.md: found, run verbatim (a tiny model standing in for the trained one),
rewritten."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import readme_examples
from tests.tiny import build, tiny_config

README = Path(readme_examples.REPO, "README.md")


def documents() -> dict[Path, list[str]]:
    """README.md and docs/*.md, each as its lines."""
    return {path: path.read_text(encoding="utf-8").split("\n") for path in readme_examples.documents()}


def test_the_docs_are_found() -> None:
    names = [p.relative_to(readme_examples.REPO).as_posix() for p in readme_examples.documents()]
    assert names[0] == "README.md" and {"docs/evaluation.md", "docs/training.md"} <= set(names)


def test_readme_and_docs_mark_their_answer_examples() -> None:
    kinds = []
    for path, lines in documents().items():
        examples = readme_examples.find_examples(lines, path.name)
        kinds += [(e.kind, e.slow) for e in examples]
        for e in examples:
            if e.kind == "console":
                assert any(line.startswith("$ ") for line in lines[e.start + 1 : e.end])
    assert ("python", False) in kinds and ("console", False) in kinds and ("console", True) in kinds


@pytest.mark.slow
def test_readme_examples_run_verbatim(tmp_path: Path) -> None:
    model = build(tiny_config())
    model.save_pretrained(tmp_path / "model")
    env = {**os.environ, "MMGPT_MODEL": str(tmp_path / "model")}
    consoles, pythons = [], []
    for path, lines in documents().items():
        new = readme_examples.render("\n".join(lines), skip_slow=True, env=env, source=path.name)
        # the tiny model answers something else than the trained one, but every command ran and printed
        new_lines = new.split("\n")
        for e in readme_examples.find_examples(new_lines, path.name):
            if e.kind == "console" and not e.slow:
                consoles.append("\n".join(new_lines[e.start + 1 : e.end]))
            if e.kind == "python":
                pythons.append(new_lines[e.output_start + 1 : e.output_end])
    # `mmgpt caption IMAGE` prints the image's path and its caption
    assert any(re.search(r"/\d+\.png\t", body) for body in consoles)
    assert not any(str(readme_examples.REPO) in body for body in consoles)
    assert pythons and all(len(output) == 2 for output in pythons)


def test_render_replaces_stale_output_and_keeps_the_rest(tmp_path: Path) -> None:
    text = ("intro\n<!-- readme-example -->\n```console\n$ X=hi\n$ echo $X\nstale\n$ echo two; echo lines\n```\n"
            "<!-- readme-example -->\n```python\nprint(6 * 7)\n```\n\n```text\nold\n```\nend")
    new = readme_examples.render(text)
    assert new == ("intro\n<!-- readme-example -->\n```console\n$ X=hi\n$ echo $X\nhi\n$ echo two; echo lines\ntwo\n"
                   "lines\n```\n<!-- readme-example -->\n```python\nprint(6 * 7)\n```\n\n```text\n42\n```\nend")
    readme, guide = tmp_path / "README.md", tmp_path / "guide.md"
    readme.write_text(new)
    guide.write_text(new)
    assert readme_examples.main([str(readme), str(guide), "--check"]) == 0
    guide.write_text(text)
    assert readme_examples.main([str(readme), str(guide), "--check"]) == 1
    assert readme_examples.main([str(guide)]) == 0 and guide.read_text() == new


def test_a_failing_example_names_its_command() -> None:
    text = "<!-- readme-example -->\n```console\n$ echo ok\n$ false\n```"
    with pytest.raises(readme_examples.ExampleError, match="`false` exited with status 1"):
        readme_examples.render(text)
    with pytest.raises(readme_examples.ExampleError, match="docs/x.md line 1: .*followed by a ```text block"):
        readme_examples.render("<!-- readme-example -->\n```python\nprint(1)\n```\nno output block", source="docs/x.md")


def readme_output_paths(text: str) -> set[str]:
    """Paths a document's commands and code write to: mmgpt export/quantize/prune OUT, --out, --lmms-task,
    save_*("...")."""
    found: set[str] = set()
    for body in re.findall(r"^```(?:bash|console|python)\n(.*?)^```$", text, re.M | re.S):
        found.update(re.findall(r"mmgpt (?:export|quantize|prune) \S+ (\S+)", body))
        found.update(re.findall(r"--(?:out|lmms-task)[ =]([\w./-]+)", body))
        found.update(re.findall(r"(?:save_pretrained|save_explanation)\((?:\w+, )?\"([^\"]+)\"", body))
    return found


def test_what_the_readmes_examples_write_is_ignored_by_git() -> None:
    repo = Path(readme_examples.REPO)
    if not (repo / ".git").exists():
        pytest.skip("not a git checkout: .gitignore applies only to one")
    # placeholders (OUT, DIR) stand for the reader's own choice
    outputs = {p for path in readme_examples.documents() for p in readme_output_paths(path.read_text(encoding="utf-8"))
               if not p.isupper()}
    assert {"exported", "q8", "pruned", "explain/"} <= outputs
    tracked = [p for p in outputs if subprocess.run(["git", "check-ignore", "-q", "--no-index", p], cwd=repo,
                                                    timeout=60).returncode != 0]
    assert tracked == [], "README and docs examples write these into the checkout, and git would list them"


@pytest.mark.slow
def test_the_first_python_example_prints_readable_text_and_writes_under_runs(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python example"):]
    code = re.search(r"^```python\n(.*?)^```$", section, re.M | re.S)[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # an untrained model's arbitrary tokens (often broken UTF-8) are not printed as if they were an answer
    assert proc.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]


@pytest.mark.slow
def test_your_data_commands_run_verbatim(tmp_path: Path) -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Your data"):]
    script = section[section.index("```bash\n") + len("```bash\n"):section.index("\n```\n")]
    # the commands name train.py and configs/ from the repository root; the files they write stay in tmp_path
    for name in ("train.py", "configs"):
        (tmp_path / name).symlink_to(Path(readme_examples.REPO, name))
    done = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for run in ("my_jsonl", "my_llava", "my_hf"):
        assert (tmp_path / "runs" / run / "model" / "model.safetensors").is_file(), run
