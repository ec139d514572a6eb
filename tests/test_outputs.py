"""mmgpt.outputs: what mmgpt recognises as its own output folder, and what the guard lets a write replace."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmgpt.outputs import (
    MARKER_NAME,
    OutputExists,
    check_output_file,
    check_output_folder,
    output_kind,
    writing_output_folder,
)


def legacy_model(folder: Path) -> Path:
    """A model folder as mmgpt wrote it before the marker: config.json under "model", weights beside it."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": {"fusion": {"type": "product"}}}))
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_folders_are_recognised_by_the_marker_or_by_what_earlier_versions_wrote(tmp_path: Path) -> None:
    assert output_kind(legacy_model(tmp_path / "model")) == "model"
    export = tmp_path / "export"
    export.mkdir()
    (export / "manifest.json").write_text(json.dumps({"format": "mmgpt-onnx", "format_version": 1}))
    assert output_kind(export) == "onnx"
    run = tmp_path / "run"
    (run / "checkpoints" / "step_2").mkdir(parents=True)
    (run / "checkpoints" / "step_2" / "trainer_state.json").write_text("{}")
    assert output_kind(run) == "run"
    explained = tmp_path / "explained"
    explained.mkdir()
    (explained / "index.html").write_text("<body><h1>Explanation</h1><div class='explanation'>...</div></body>")
    (explained / "token_00_red.png").write_bytes(b"png")
    assert output_kind(explained) == "explain"
    marked = tmp_path / "marked"
    marked.mkdir()
    (marked / MARKER_NAME).write_text(json.dumps({"format": "mmgpt-explain"}))
    assert output_kind(marked) == "explain"


@pytest.mark.parametrize("files", [
    {"manifest.json": json.dumps({"name": "my web app", "start_url": "/"}), "index.html": "<html></html>"},
    {"index.html": "<h1>Explanation</h1>", "token_00_logo.png": "png"},
    # a transformers model: config.json and weights, but no mmgpt config under "model"
    {"config.json": json.dumps({"model_type": "gpt2", "n_layer": 2}), "model.safetensors": "weights"},
    {MARKER_NAME: json.dumps({"format": "something-else"}), "notes.txt": "mine"},
    {"config.json": "not json", "model.safetensors": "x"},
])
def test_a_users_folder_is_not_mmgpts_and_is_never_replaced(tmp_path: Path, files: dict[str, str]) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    assert output_kind(folder) is None
    for kind in ("model", "onnx"):
        for overwrite in (False, True):
            with pytest.raises(OutputExists, match=f"{folder} is a folder that mmgpt did not write .* even with "
                                                   "--overwrite"):
                check_output_folder(folder, kind, overwrite=overwrite)
    assert {p.name: p.read_text() for p in folder.iterdir()} == files


def test_an_earlier_output_is_replaced_only_with_overwrite_and_only_by_its_own_kind(tmp_path: Path) -> None:
    folder = legacy_model(tmp_path / "model")
    with pytest.raises(OutputExists, match="earlier mmgpt model folder: replace it with --overwrite"):
        check_output_folder(folder, "model")
    check_output_folder(folder, "model", overwrite=True)
    check_output_folder(folder, "model", reuse=True)
    with pytest.raises(OutputExists, match="is an mmgpt model folder, not an mmgpt ONNX export"):
        check_output_folder(folder, "onnx", overwrite=True)
    # missing and empty folders are simply written
    check_output_folder(tmp_path / "new", "model")
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty", "model")


def test_a_file_is_never_replaced_by_a_folder(tmp_path: Path) -> None:
    path = tmp_path / "out"
    path.write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(OutputExists, match=f"{path} is a file, not a folder"):
            check_output_folder(path, "model", overwrite=overwrite)
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputExists, match="is a file, not a folder"):
        check_output_folder(tmp_path / "link", "model", overwrite=True)
    assert path.read_text() == "keep me"


def test_output_files_need_overwrite_and_a_folder_is_never_one(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    check_output_file(path)
    path.write_text("{}")
    with pytest.raises(OutputExists, match=f"{path} already exists: replace it with --overwrite"):
        check_output_file(path)
    check_output_file(path, overwrite=True)
    with pytest.raises(OutputExists, match="is a folder, not a file"):
        check_output_file(tmp_path, overwrite=True)
    with pytest.raises(OutputExists, match=f"{path} is a file, not a folder"):
        check_output_file(path / "report.html", overwrite=True)


def test_a_written_folder_is_marked_and_a_failed_write_leaves_the_previous_one(tmp_path: Path) -> None:
    folder = tmp_path / "explained"
    with writing_output_folder(folder, "explain") as tmp:
        (tmp / "index.html").write_text("first")
    assert output_kind(folder) == "explain" and json.loads((folder / MARKER_NAME).read_text())["format"] == \
        "mmgpt-explain"
    with pytest.raises(RuntimeError), writing_output_folder(folder, "explain", overwrite=True) as tmp:
        (tmp / "index.html").write_text("second")
        raise RuntimeError("killed halfway")
    assert (folder / "index.html").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explained"]  # no temp folder left
