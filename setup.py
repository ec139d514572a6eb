"""Package discovery; everything else about the build is in pyproject.toml.

`encoders/`, `fusion/` and `configs/` are top-level folders installed only inside the mmgpt namespace
(pyproject's package-dir), which setuptools' own `find` cannot express: their packages are found here and renamed.
"""
from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
NESTED = ("encoders", "fusion", "configs")


def mmgpt_packages() -> list[str]:
    """Every package of the distribution, by its installed name (mmgpt.*)."""
    packages = find_packages(str(ROOT), include=["mmgpt", "mmgpt.*"])
    for folder in NESTED:
        packages += [f"mmgpt.{name}" for name in find_packages(str(ROOT), include=[folder, f"{folder}.*"])]
    return sorted(packages)


if __name__ == "__main__":
    setup(packages=mmgpt_packages())
