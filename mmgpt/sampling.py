"""Seeded sampling from a private torch.Generator: reproducible under threads, torch's global RNG untouched."""
from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


class _GeneratorSampler(LogitsProcessor):
    """Sample the next token with a private torch.Generator; return scores that make greedy search pick it.

    HF `generate` samples from torch's global RNG, which every thread shares: a seed set there is not
    reproducible under concurrency and disturbs the caller's own random state. HF's own warpers
    (temperature, top-k, top-p, in its order) shape the distribution, so the sampling is the same.
    """

    def __init__(self, temperature: float, top_k: int, top_p: float, generator: torch.Generator) -> None:
        self.warpers = LogitsProcessorList()
        if temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if top_k:
            self.warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.generator = generator

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """scores (B, V) -> 0 at the sampled token of each row, -inf elsewhere."""
        probs = torch.softmax(self.warpers(input_ids, scores).float(), dim=-1)
        tokens = torch.multinomial(probs, num_samples=1, generator=self.generator)
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens, 0.0)


def draws_tokens(processors: LogitsProcessorList) -> bool:
    """Whether `processors` sample the next token themselves (greedy search then only reads their choice)."""
    return any(isinstance(processor, _GeneratorSampler) for processor in processors)


_GLOBAL_RNG_LOCK = threading.Lock()


@contextlib.contextmanager
def seeded_decoding(config: GenerationConfig, seed: int | None,
                    device: torch.device | str) -> Iterator[tuple[GenerationConfig, dict[str, Any]]]:
    """Yield (generation config, extra generate kwargs) that sample reproducibly from `seed` (None: fresh).

    `config` is a resolved config (mmgpt.decoding.resolve_generation_config); what is yielded serves every
    generate call inside the block. torch's global RNG is left as it was.
    """
    if not config.do_sample:
        yield config, {}
        return
    device = torch.device(device)
    if (config.num_beams or 1) == 1:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed) if seed is not None else generator.seed()
        sampler = _GeneratorSampler(config.temperature or 1.0, config.top_k or 0, config.top_p or 1.0, generator)
        greedy = copy.deepcopy(config)
        # transformers' neutral values: greedy search ignores them, and validate() has nothing to warn about
        greedy.do_sample, greedy.temperature, greedy.top_k, greedy.top_p = False, 1.0, 50, 1.0
        yield greedy, {"logits_processor": LogitsProcessorList([sampler])}
        return
    # beam sampling draws inside HF's beam search, out of a logits processor's reach: give it a private,
    # seeded copy of the global RNG, one call at a time (other code drawing from the global RNG meanwhile
    # still changes the answer, and its draws are undone when the copy is put back)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=cuda):
        seed = seed if seed is not None else int(torch.Generator().seed())
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield config, {}
