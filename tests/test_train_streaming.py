"""Training on a streamed Hugging Face dataset mixed with a list: no pass first, exact resume, bad images."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmgpt.data.dataset import TooManyBadImages
from mmgpt.training import loop
from mmgpt.training.loop import main
from tests import hf_data
from tests.test_train import make_jsonl, tiny_config, weights


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stream")
    return hf_data.parquet_shards(root / "parquet", 120, shards=4), make_jsonl(root / "jsonl", 24)


def _config(tmp_path: Path, sets: tuple[Path, Path], out: Path, **overrides) -> Path:
    parquet, jsonl = sets
    train = [{"format": "hf", "path": str(parquet), "streaming": True, "shuffle_buffer": 0, "name": "stream",
              "weight": 3.0, "augment": ["hflip"]},
             {"format": "jsonl", "path": str(jsonl), "name": "list", "weight": 1.0}]
    evals = [{"format": "hf", "path": str(parquet), "streaming": True, "name": "eval", "max_examples": 8,
              "columns": {"question": "question", "answer": "answer"}}]
    return tiny_config(tmp_path, jsonl, out, **{"data.train": train, "data.eval": evals, **overrides})


def test_streamed_run_stops_and_resumes_exactly(tmp_path: Path, sets: tuple[Path, Path]) -> None:
    full = tmp_path / "full"
    result = main(["--config", str(_config(tmp_path, sets, full, max_steps=8))])
    assert "eval/loss" in result["metrics"]
    resumed = tmp_path / "resumed"
    assert main(["--config", str(_config(tmp_path, sets, resumed, max_steps=8, stop_at_step=3))]) == \
        {"stopped_at_step": 3}
    state = json.loads((resumed / "checkpoints" / "step_3" / "trainer_state.json").read_text())
    (position,) = state["data_state"]
    assert position["batches"] == 3 and state["images_read_runtime"] == 24
    main(["--config", str(_config(tmp_path, sets, resumed, max_steps=8)), "--resume", "latest"])
    history = [json.loads((run / "history.json").read_text())["train"] for run in (full, resumed)]
    assert history[0] == history[1]
    a, b = weights(full), weights(resumed)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_bad_images_of_a_stream_are_skipped_and_stop_the_run_past_max_bad_fraction(
        tmp_path: Path, sets: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    parquet = hf_data.parquet_shards(tmp_path / "bad", 64, shards=2, bad_every=4)
    config = _config(tmp_path, (parquet, sets[1]), tmp_path / "ok", max_steps=3, **{"data.max_bad_fraction": 0.5})
    result = main(["--config", str(config)])
    # a quarter of the stream's rows are bad: each is skipped, counted, and replaced by the next row
    assert result["bad_images_during_training"] > 0
    monkeypatch.setattr(loop, "MIN_IMAGES_FOR_BAD_FRACTION", 16)
    config = _config(tmp_path, (parquet, sets[1]), tmp_path / "stop", max_steps=3, **{"data.max_bad_fraction": 0.05})
    with pytest.raises(TooManyBadImages, match=r"images read during training failed to load.*max_bad_fraction=0.05"):
        main(["--config", str(config)])
