"""Reading JSON files: one reader whose errors name the file (a leaf module, so metrics can use it)."""
from __future__ import annotations

import json
import os
from typing import Any


def read_json_file(path: str | os.PathLike) -> Any:
    """Parse a JSON file (UTF-8, UTF-16 or UTF-32); damaged, undecodable or absurdly nested JSON is a ValueError.

    The message names the file.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        return json.loads(data)  # from bytes, json detects UTF-8 (with or without BOM), UTF-16 and UTF-32
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid JSON text ({e.encoding}: {e.reason} at byte {e.start}); "
                         "save it as UTF-8") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to parse") from None
