"""manifest.json of an exported folder: what `mmgpt export` writes and `mmgpt.runtime` checks before loading.

torch-free: the exporter and the runtime share these names and checks.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT = "mmgpt-onnx"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
PREFIX_GRAPH = "prefix.onnx"
EMBED_GRAPH = "embed_tokens.onnx"
DECODER_GRAPH = "decoder.onnx"
GRAPH_FILES = {"prefix": PREFIX_GRAPH, "embed_tokens": EMBED_GRAPH, "decoder": DECODER_GRAPH}


class ExportFolderError(ValueError):
    """A folder that is not a usable ONNX export; the message names the folder and the problem."""


def is_export_folder(folder: str | Path) -> bool:
    """Whether `folder` holds an export's manifest.json (a saved torch model has config.json instead)."""
    return (Path(folder).expanduser() / MANIFEST_NAME).is_file()


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The checked manifest of an exported folder, else ExportFolderError naming what is wrong."""
    folder = Path(folder).expanduser()
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ExportFolderError(
            f"{folder} is not an exported mmgpt model: it has no {MANIFEST_NAME} (export one with "
            "`mmgpt export MODEL OUT --format onnx`)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportFolderError(f"{path} cannot be read as JSON: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ExportFolderError(f"{path}: 'format' must be '{FORMAT}', got {found!r}")
    version = manifest.get("format_version")
    if version not in SUPPORTED_VERSIONS:
        raise ExportFolderError(
            f"{path}: format_version {version!r} is not one this mmgpt reads "
            f"({', '.join(map(str, SUPPORTED_VERSIONS))}); export the model again with this mmgpt or upgrade mmgpt"
        )
    for key in ("graphs", "tokens", "prompts", "limits", "decoder"):
        if not isinstance(manifest.get(key), dict):
            raise ExportFolderError(f"{path}: the '{key}' entry is missing or not an object")
    for name, file in GRAPH_FILES.items():
        if not (folder / file).is_file():
            raise ExportFolderError(f"{folder}: the {name} graph {file} named in {MANIFEST_NAME} is missing")
    return manifest
