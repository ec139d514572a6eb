"""The weight average (optim.ema_decay): its warm-up formula, batch-norm buffers, and checkpoint round trip."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mmgpt.training.ema import EMA_NAME, WeightEMA


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_average_follows_the_warmed_up_decay() -> None:
    model = small_model()
    ema = WeightEMA(model, decay=0.5)
    expected = model[0].weight.detach().clone()
    ema.update(model)  # the first update copies
    for n in range(1, 6):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model.train()
        model(torch.randn(8, 3))  # moves the batch-norm statistics
        ema.update(model)
        decay = min(0.5, (1 + n) / (10 + n))
        expected = decay * expected + (1 - decay) * model[0].weight.detach()
    torch.testing.assert_close(ema.module[0].weight, expected)
    # buffers are averaged too, and the integer counter follows the model
    assert not torch.equal(ema.module[1].running_mean, model[1].running_mean)
    assert int(ema.module[1].num_batches_tracked) == int(model[1].num_batches_tracked) == 5
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())


def test_average_round_trips_through_a_checkpoint_folder(tmp_path: Path) -> None:
    model = small_model()
    ema = WeightEMA(model, decay=0.9)
    for _ in range(3):
        with torch.no_grad():
            model[0].weight.mul_(1.5)
        ema.update(model)
    ema.save(tmp_path)
    restored = WeightEMA(model, decay=0.9)
    assert restored.load(tmp_path)
    for a, b in zip(ema.averaged.state_dict().values(), restored.averaged.state_dict().values()):
        assert torch.equal(a, b)
    # the update count came back too, so the next decay is the same
    assert int(restored.averaged.n_averaged) == 3
    assert not WeightEMA(model, decay=0.9).load(tmp_path / "elsewhere")


def test_average_of_another_model_is_refused(tmp_path: Path) -> None:
    WeightEMA(small_model(), decay=0.9).save(tmp_path)
    other = WeightEMA(nn.Sequential(nn.Linear(3, 4)), decay=0.9)
    with pytest.raises(ValueError, match=EMA_NAME):
        other.load(tmp_path)


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.1])
def test_decay_outside_the_open_interval_is_refused(decay: float) -> None:
    with pytest.raises(ValueError, match="ema_decay"):
        WeightEMA(small_model(), decay=decay)
