"""Run the marked examples of README.md and docs/*.md and write what they print into them, so outputs cannot drift.

A block preceded by the line `<!-- readme-example -->` is run from the repository root:
- a ```console block: its `$ ` lines run in one bash session, in order; the lines after each command are
  replaced by what it printed on stdout;
- a ```python block: run as one script; the ```text block right after it is replaced by its stdout.
`<!-- readme-example slow -->` marks an example that `--skip-slow` leaves out (a full evaluation).

    python tests/readme_examples.py             # after the main job: rewrite the outputs in README.md and docs/
    python tests/readme_examples.py --check     # exit 1 if any file's outputs differ from a fresh run
    python tests/readme_examples.py docs/evaluation.md   # only the files named
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"^<!-- readme-example( slow)? -->$")
END = "<<<readme-example-status {}>>>"
END_PATTERN = re.compile(r"^<<<readme-example-status (\d+)>>>$")


def documents() -> list[Path]:
    """The files whose examples run: README.md, then the guides in docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@dataclass
class Example:
    """One marked example: where its lines are in its file and what kind it is."""

    kind: str  # "console" or "python"
    start: int  # index of the opening fence line
    end: int  # index of the closing fence line
    slow: bool
    output_start: int | None = None  # python: the text block's opening fence
    output_end: int | None = None


class ExampleError(RuntimeError):
    """A marked example could not be parsed or did not run."""


def _closing_fence(lines: list[str], opening: int, source: str) -> int:
    for i in range(opening + 1, len(lines)):
        if lines[i].strip() == "```":
            return i
    raise ExampleError(f"{source} line {opening + 1}: code block never closed")


def find_examples(lines: list[str], source: str = "README.md") -> list[Example]:
    """Every marked example of a file's lines (`source` names the file in errors), in order."""
    examples = []
    for i, line in enumerate(lines):
        match = MARKER.match(line.strip())
        if not match:
            continue
        if i + 1 >= len(lines) or lines[i + 1].strip() not in ("```console", "```python"):
            raise ExampleError(f"{source} line {i + 1}: the marker must be followed by a ```console or ```python block")
        kind = lines[i + 1].strip()[3:]
        example = Example(kind, i + 1, _closing_fence(lines, i + 1, source), bool(match.group(1)))
        if kind == "python":
            after = example.end + 1
            while after < len(lines) and not lines[after].strip():
                after += 1
            if after >= len(lines) or lines[after].strip() != "```text":
                raise ExampleError(f"{source} line {i + 1}: a python example must be followed by a ```text block")
            example.output_start, example.output_end = after, _closing_fence(lines, after, source)
        examples.append(example)
    return examples


def tidy(text: str) -> str:
    """Machine-specific paths in an output -> what a reader's machine shows in their place."""
    purelib = sysconfig.get_paths()["purelib"]
    return text.replace(purelib + os.sep, ".../site-packages/").replace(str(REPO) + os.sep, "")


def _run(command: list[str], script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, input=script, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)


def run_console(lines: list[str], example: Example, env: dict[str, str], source: str) -> list[str]:
    """The block's lines with each command's output replaced by a fresh run's stdout."""
    commands = [line[2:] for line in lines[example.start + 1 : example.end] if line.startswith("$ ")]
    script = "".join(f'{command}\necho "{END.format("$?")}"\n' for command in commands)
    result = _run(["bash"], script, env)
    outputs: list[list[str]] = [[]]
    for line in result.stdout.splitlines():
        status = END_PATTERN.match(line)
        if status:
            if status.group(1) != "0":
                raise ExampleError(f"`{commands[len(outputs) - 1]}` exited with status {status.group(1)}:\n"
                                   f"{result.stderr[-3000:]}")
            outputs.append([])
        else:
            outputs[-1].append(tidy(line))
    if len(outputs) != len(commands) + 1:
        raise ExampleError(f"console example at {source} line {example.start + 1} stopped early:\n"
                           f"{result.stderr[-3000:]}")
    new = []
    for command, output in zip(commands, outputs):
        new += [f"$ {command}", *output]
    return new


def run_python(lines: list[str], example: Example, env: dict[str, str], source: str) -> list[str]:
    """The stdout of the block's code, as the lines of its text block."""
    code = "\n".join(lines[example.start + 1 : example.end]) + "\n"
    result = _run([sys.executable, "-"], code, env)
    if result.returncode != 0:
        raise ExampleError(f"python example at {source} line {example.start + 1} failed:\n{result.stderr[-3000:]}")
    return [tidy(line) for line in result.stdout.splitlines()]


def render(text: str, skip_slow: bool = False, env: dict[str, str] | None = None, source: str = "README.md") -> str:
    """A file's text with every marked example's output replaced by a fresh run's."""
    lines = text.split("\n")
    env = dict(os.environ if env is None else env)
    # later examples first, so earlier line numbers stay valid while blocks change length
    for example in reversed(find_examples(lines, source)):
        if example.slow and skip_slow:
            continue
        if example.kind == "console":
            lines[example.start + 1 : example.end] = run_console(lines, example, env, source)
        else:
            lines[example.output_start + 1 : example.output_end] = run_python(lines, example, env, source)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Rewrite the example outputs of README.md and docs/*.md (or, with --check, report whether they are current)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, help="default: README.md and docs/*.md")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the outputs differ")
    parser.add_argument("--skip-slow", action="store_true", help="leave out examples marked slow")
    args = parser.parse_args(argv)
    stale = 0
    for path in args.files or documents():
        text = path.read_text(encoding="utf-8")
        source = str(path.relative_to(REPO) if path.resolve().is_relative_to(REPO) else path)
        try:
            new = render(text, skip_slow=args.skip_slow, source=source)
        except ExampleError as e:
            print(f"readme_examples: error: {e}", file=sys.stderr)
            return 2
        if new == text:
            continue
        if args.check:
            print(f"{source}: example outputs differ from a fresh run; run {Path(__file__).name}", file=sys.stderr)
            stale += 1
        else:
            path.write_text(new, encoding="utf-8")
            print(f"updated {source}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
