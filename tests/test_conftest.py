"""The test suite never writes into the user's home: MMGPT_CACHE and the default-model pointer point elsewhere."""
from __future__ import annotations

import os
from pathlib import Path

import mmgpt.inference as inference
from mmgpt.data.formats import default_cache_root


def test_the_default_model_pointer_and_the_cache_are_not_in_the_home_cache() -> None:
    # set by tests/conftest.py to a temp folder of the session, unless set before (CI: the repository's .cache)
    assert os.environ.get("MMGPT_CACHE"), "the suite would fall back to ~/.cache/mmgpt"
    cache = Path(os.environ["MMGPT_CACHE"]).resolve()
    assert inference._POINTER.resolve() == cache / "default_model.txt"
    assert default_cache_root().resolve() == cache
