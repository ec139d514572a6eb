"""manifest.json of an exported folder: what `mmgpt export` writes and `mmgpt.runtime` checks before loading.

torch-free: the exporter and the runtime share these names and checks. An exported folder reads only its own
files: every file the manifest names, every graph and every external-data file a graph names must resolve
(symlinks followed) inside the folder, whatever the installed onnxruntime would allow.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmgpt.saving import existing_copy

MANIFEST_NAME = "manifest.json"
FORMAT = "mmgpt-onnx"
FORMAT_VERSION = 1
# version 2: several images per prompt or tiling (the manifest's "images" entry, a prefix graph that takes
# (B, K, 3, H, W) pixels with an image mask and slots); a one-image export stays version 1
IMAGE_SETS_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
PREFIX_GRAPH = "prefix.onnx"
EMBED_GRAPH = "embed_tokens.onnx"
DECODER_GRAPH = "decoder.onnx"
GRAPH_FILES = {"prefix": PREFIX_GRAPH, "embed_tokens": EMBED_GRAPH, "decoder": DECODER_GRAPH}
# the graphs' weights: fp32, or int8 matmul weights (`mmgpt export --int8`); the runtime runs either as it is
DTYPES = ("float32", "int8")


class ExportFolderError(ValueError):
    """A folder that is not a usable ONNX export; the message names the folder and the problem."""


def is_export_folder(folder: str | Path) -> bool:
    """Whether `folder` (or the copy a killed save left aside) holds an export's manifest.json (a saved torch
    model has config.json instead)."""
    return (saved_export_folder(folder) / MANIFEST_NAME).is_file()


def saved_export_folder(folder: str | Path) -> Path:
    """`folder`, or its aside copy `.NAME.old` when an export was killed between its two renames (mmgpt.saving)."""
    folder = Path(folder).expanduser()
    return existing_copy(folder, lambda f: (f / MANIFEST_NAME).is_file()) or folder


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The checked manifest of an exported folder, else ExportFolderError naming what is wrong."""
    folder = saved_export_folder(folder)
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
    if manifest.get("dtype", "float32") not in DTYPES:
        raise ExportFolderError(f"{path}: 'dtype' must be one of {', '.join(DTYPES)}, got {manifest.get('dtype')!r}")
    for key in ("graphs", "tokens", "prompts", "limits", "decoder"):
        if not isinstance(manifest.get(key), dict):
            raise ExportFolderError(f"{path}: the '{key}' entry is missing or not an object")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise ExportFolderError(f"{path}: the 'files' entry is missing or not an object")
    for key, file in files.items():
        if file is not None:
            inside_folder(folder, file, f"{path}: files.{key}")
    for name, file in GRAPH_FILES.items():
        if not (folder / file).is_file():
            raise ExportFolderError(f"{folder}: the {name} graph {file} named in {MANIFEST_NAME} is missing")
        graph = inside_folder(folder, file, f"{folder}: the {name} graph")
        for location in external_data_locations(graph):
            inside_folder(folder, location, f"{graph}: external data")
    return manifest


def inside_folder(folder: Path, relative: Any, what: str) -> Path:
    """`folder / relative`, refused (ExportFolderError naming `what`) unless it resolves inside `folder`."""
    if not isinstance(relative, str) or not relative:
        raise ExportFolderError(f"{what} must be a file name inside the folder, got {relative!r}")
    resolved = (folder / relative).resolve()
    if not resolved.is_relative_to(folder.resolve()):
        raise ExportFolderError(f"{what} '{relative}' resolves to {resolved}, outside {folder}; an exported folder "
                                "reads only its own files")
    return resolved


def external_data_locations(graph_file: Path) -> list[str]:
    """The external-data file of every tensor in an ONNX file (initializers, attributes, subgraphs, functions)."""
    try:
        import onnx
    except ImportError as e:
        raise ExportFolderError(f"checking {graph_file} needs the onnx package: pip install 'mmgpt[export]'") from e
    try:
        model = onnx.load(str(graph_file), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError is its own class
        raise ExportFolderError(f"{graph_file} is not a readable ONNX graph: {e}") from e
    tensors: list = []
    graphs = [model.graph]
    nodes = [node for function in model.functions for node in function.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            tensors.extend(graph.initializer)
            tensors.extend(t for sparse in graph.sparse_initializer for t in (sparse.values, sparse.indices))
            nodes.extend(graph.node)
            continue
        for attribute in nodes.pop().attribute:
            tensors.extend([attribute.t, *attribute.tensors])
            tensors.extend(t for sparse in (attribute.sparse_tensor, *attribute.sparse_tensors)
                           for t in (sparse.values, sparse.indices))
            graphs.extend([attribute.g, *attribute.graphs])
    return [entry.value for tensor in tensors if tensor.data_location == onnx.TensorProto.EXTERNAL
            for entry in tensor.external_data if entry.key == "location"]
