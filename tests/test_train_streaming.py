"""Training on a streamed Hugging Face dataset mixed with a list: no pass first, exact resume, bad images."""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import pytest
import torch

from mmgpt.data.dataset import TooManyBadImages
from mmgpt.training import loop
from mmgpt.training.loop import run_training
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
    result = run_training(["--config", str(_config(tmp_path, sets, full, max_steps=8))])
    assert "eval/loss" in result["metrics"]
    resumed = tmp_path / "resumed"
    assert run_training(["--config", str(_config(tmp_path, sets, resumed, max_steps=8, stop_at_step=3))]) == \
        {"stopped_at_step": 3}
    state = json.loads((resumed / "checkpoints" / "step_3" / "trainer_state.json").read_text())
    (position,) = state["data_state"]
    assert position["batches"] == 3 and state["images_read_runtime"] == 24
    run_training(["--config", str(_config(tmp_path, sets, resumed, max_steps=8)), "--resume", "latest"])
    history = [json.loads((run / "history.json").read_text())["train"] for run in (full, resumed)]
    assert history[0] == history[1]
    a, b = weights(full), weights(resumed)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_bad_images_of_a_stream_are_skipped_and_stop_the_run_past_max_bad_fraction(
        tmp_path: Path, sets: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    parquet = hf_data.parquet_shards(tmp_path / "bad", 64, shards=2, bad_every=4)
    config = _config(tmp_path, (parquet, sets[1]), tmp_path / "ok", max_steps=3, **{"data.max_bad_fraction": 0.5})
    result = run_training(["--config", str(config)])
    # a quarter of the stream's rows are bad: each is skipped, counted, and replaced by the next row
    assert result["bad_images_during_training"] > 0
    monkeypatch.setattr(loop, "MIN_IMAGES_FOR_BAD_FRACTION", 16)
    config = _config(tmp_path, (parquet, sets[1]), tmp_path / "stop", max_steps=3, **{"data.max_bad_fraction": 0.05})
    with pytest.raises(TooManyBadImages, match=r"images read during training failed to load.*max_bad_fraction=0.05"):
        run_training(["--config", str(config)])


def test_stream_loader_decodes_in_every_worker_and_gives_the_same_batches_with_any_number(
        sets: tuple[Path, Path]) -> None:
    from types import SimpleNamespace

    from mmgpt.data.formats import read_dataset
    from mmgpt.data.spec import DatasetSpec
    from mmgpt.training.loop import build_stream_loader

    def image_tensor(image: object) -> torch.Tensor:
        # the decoding process's id in the pixels, so a batch says where its images were read
        return torch.full((3, 2, 2), float(os.getpid()), dtype=torch.float64)

    processor = SimpleNamespace(image_tensor=image_tensor, collate=lambda examples: {
        "pixel_values": torch.stack([e.image for e in examples]), "ids": [e.id for e in examples]})
    spec = DatasetSpec(format="hf", path=str(sets[0]), streaming=True, shuffle_buffer=0, name="stream")
    runs = {}
    for workers in (0, 2):
        cfg = SimpleNamespace(batch_size=4, seed=0, data=SimpleNamespace(num_workers=workers, train=[spec]))
        accelerator = SimpleNamespace(process_index=0, num_processes=1)
        loader, _ = build_stream_loader(cfg, [("stream", read_dataset(spec), 1.0, None)], processor, accelerator)
        runs[workers] = list(itertools.islice(loader, 6))
    assert [b["ids"] for b in runs[0]] == [b["ids"] for b in runs[2]]
    assert [b["data_state"] for b in runs[0]] == [b["data_state"] for b in runs[2]]
    assert {float(b["pixel_values"][0, 0, 0, 0]) for b in runs[0]} == {os.getpid()}
    readers = {float(b["pixel_values"][0, 0, 0, 0]) for b in runs[2]}
    assert len(readers) == 2 and os.getpid() not in readers, "both workers decode, the main process does not"


@pytest.mark.slow
def test_two_processes_split_the_stream_run_alike_and_resume_exactly(tmp_path: Path, sets: tuple[Path, Path]) -> None:
    from mmgpt.data.formats import read_dataset
    from mmgpt.data.streaming import StreamingMixture
    from mmgpt.training.config import load_train_config
    from tests.test_train import launch_two_processes

    def launch(out: Path, *args: str, **overrides) -> None:
        proc = launch_two_processes(_config(tmp_path, sets, out, batch_size=4, max_steps=8, **overrides), tmp_path,
                                    *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "2 process(es)" in proc.stderr

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    launch(full)
    launch(resumed, stop_at_step=3)
    saved = json.loads((resumed / "checkpoints" / "step_3" / "trainer_state.json").read_text())["data_state"]
    launch(resumed, "--resume", "latest")
    history = [json.loads((run / "history.json").read_text())["train"] for run in (full, resumed)]
    assert len(history[0]) == 8 and history[0] == history[1]
    a, b = weights(full), weights(resumed)
    for name in a:
        assert torch.equal(a[name], b[name]), name

    # each rank's saved position is where its own plan of the mixture stands after 3 batches, so the runs read
    # what these plans read: a shard of the stream per rank, and the same dataset for a batch on both ranks
    cfg = load_train_config(str(_config(tmp_path, sets, tmp_path / "plan", batch_size=4)), [])
    plans, rows = [], []
    for rank in range(2):
        mixture = StreamingMixture([(s.label, read_dataset(s), s.weight) for s in cfg.data.train], batch_size=4,
                                   seed=cfg.seed, rank=rank, world_size=2)
        plan = list(itertools.islice(mixture, 3))
        assert plan[-1].state == saved[rank] and saved[rank]["batches"] == 3
        plans.append([p.dataset for p in plan])
        stream = read_dataset(cfg.data.train[0])
        stream.shard(rank, 2)
        rows.append({int(str(example.id).split(":")[0]) for example in stream})  # ids are row:turn
    assert plans[0] == plans[1]
    assert not rows[0] & rows[1] and rows[0] | rows[1] == set(range(120)), "disjoint shards, together complete"
