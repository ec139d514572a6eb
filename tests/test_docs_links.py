"""Every relative link of README.md and docs/*.md reaches a file of the checkout, and its #anchor a heading there."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import readme_examples

REPO = Path(readme_examples.REPO)
# [text](target) and ![alt](target); a target is a path, optionally with a #fragment, or only a #fragment
LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)\)")
FENCE = re.compile(r"^```.*?^```$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def prose(text: str) -> str:
    """`text` without its code blocks and inline code, where a bracket is code, not a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    """The targets of the Markdown links and images in `text`'s prose."""
    return LINK.findall(prose(text))


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives `text`'s headings: lower case, punctuation dropped, spaces as -, repeats numbered."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*#*$", FENCE.sub("", text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def broken_links(path: Path, root: Path = REPO) -> list[str]:
    """The relative links of the Markdown file `path` that reach no file under `root`, or no heading of it."""
    broken = []
    for target in links(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not a file of the checkout
            continue
        file, _, fragment = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.is_relative_to(root) or not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif fragment and (resolved.suffix != ".md" or fragment not in anchors(resolved.read_text(encoding="utf-8"))):
            broken.append(f"{target} (no heading with that anchor)")
    return broken


@pytest.mark.parametrize("path", readme_examples.documents(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_resolves(path: Path) -> None:
    assert broken_links(path) == []


def test_the_readme_links_every_guide() -> None:
    linked = {(REPO / target.partition("#")[0]).resolve() for target in links((REPO / "README.md").read_text())}
    guides = set((REPO / "docs").glob("*.md"))
    assert guides and guides <= linked, sorted(p.name for p in guides - linked)


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(b"")
    (root / "docs" / "guide.md").write_text("# Guide\n\n## Two words (a.py)\n\n## Two words (a.py)\n")
    readme = root / "README.md"
    readme.write_text(
        "[ok](docs/guide.md) [ok](docs/guide.md#two-words-apy) [ok](docs/guide.md#two-words-apy-1) [ok](#top)\n"
        "[web](https://example.org/x) `[code](missing.md)`\n```\n[fenced](missing.md)\n```\n# Top\n"
        "[gone](docs/missing.md) [bad anchor](docs/guide.md#three-words) ![img](../outside.png)\n")
    assert broken_links(readme, root) == ["docs/missing.md (no such file)",
                                          "docs/guide.md#three-words (no heading with that anchor)",
                                          "../outside.png (no such file)"]
