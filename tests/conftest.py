"""Put tests/ on sys.path so helper modules (e.g. bad_images) import by name; keep the suite out of the user's home.

MMGPT_CACHE (built-in datasets, the default-model pointer) goes to a temp folder of this session unless it is
already set (CI sets it to the repository's .cache), before any test module imports mmgpt: mmgpt.inference
reads it once, at import, so a test run would otherwise record its models as the user's default.
"""
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

if not os.environ.get("MMGPT_CACHE"):
    _CACHE = tempfile.mkdtemp(prefix="mmgpt-tests-")
    os.environ["MMGPT_CACHE"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
if "mmgpt.inference" in sys.modules:
    # imported before this file (a plugin): its pointer was computed from the old environment
    sys.modules["mmgpt.inference"]._POINTER = Path(os.environ["MMGPT_CACHE"]) / "default_model.txt"
