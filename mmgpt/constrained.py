"""Closed-set answers: `answer_choices` in the generation config lets decoding write only one of the given answers.

The choices become a token trie (each choice's answer tokens, then eos, as the model is trained to write them);
a logits processor allows, at each step, only the tokens that continue a choice. Greedy decoding with choices
is an exhaustive beam search over that trie (as many beams as choices, no length penalty), so it returns
the choice of highest model probability, log p(choice, eos | image, question); sampling draws token by token
within the trie, and an explicit num_beams > 1 keeps its own width and length penalty.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase

ANSWER_CHOICES = "answer_choices"


def check_answer_choices(name: str, value: Any) -> tuple[str, ...]:
    """A non-empty list/tuple of non-empty strings (stripped, duplicates dropped), else TypeError/ValueError."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of answer strings, got {type(value).__name__} {value!r}")
    if not value:
        raise ValueError(f"{name} must hold at least one answer, got an empty list")
    for i, choice in enumerate(value):
        if not isinstance(choice, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(choice).__name__} {choice!r}")
        if not choice.strip():
            raise ValueError(f"{name}[{i}] is empty; every choice must be an answer the model can write")
    return tuple(dict.fromkeys(choice.strip() for choice in value))


def choice_token_ids(choices: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Each choice's answer tokens then eos; ValueError for a choice the tokenizer cannot write back exactly."""
    sequences = []
    for choice in choices:
        ids = tokenizer.encode(choice, add_special_tokens=False)
        written = tokenizer.decode(ids, skip_special_tokens=True).strip()
        if written != choice:
            raise ValueError(f"answer_choices: {choice!r} cannot be written by this model's tokenizer "
                             f"(its tokens read back as {written!r})")
        sequences.append([*ids, tokenizer.eos_token_id])
    return sequences


class AnswerChoicesLogitsProcessor(LogitsProcessor):
    """Allow only tokens that continue one of the choices' token sequences (a trie keyed by the tokens so far)."""

    def __init__(self, sequences: Sequence[Sequence[int]], eos_token_id: int) -> None:
        self.eos_token_id = eos_token_id
        allowed: dict[tuple[int, ...], set[int]] = {}
        for ids in sequences:
            for depth in range(len(ids)):
                allowed.setdefault(tuple(ids[:depth]), set()).add(ids[depth])
        self.allowed = {prefix: sorted(tokens) for prefix, tokens in allowed.items()}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """input_ids (B, generated so far), scores (B, V) -> scores with every token off the trie at -inf."""
        banned = torch.zeros_like(scores, dtype=torch.bool)
        on_trie = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
        for row, ids in enumerate(input_ids.tolist()):
            if self.eos_token_id in ids:  # a finished row, padded until the batch ends
                continue
            banned[row] = True
            allowed = self.allowed.get(tuple(ids))
            if allowed is None:  # a beam that left the trie (kept only to fill the beam width) stays dead
                continue
            banned[row, allowed] = False
            on_trie[row] = True
        constrained = scores.masked_fill(banned, float("-inf"))
        # a penalty or n-gram ban may have ruled out every allowed token: the answer must still be a choice
        stuck = on_trie & torch.isneginf(constrained).all(dim=-1)
        if stuck.any():
            constrained[stuck] = torch.zeros_like(scores[stuck]).masked_fill(banned[stuck], float("-inf"))
        return constrained


def constrain_to_choices(config: GenerationConfig, generate_kwargs: dict[str, Any],
                         tokenizer: PreTrainedTokenizerBase) -> tuple[GenerationConfig, dict[str, Any]]:
    """(config, generate kwargs) with `answer_choices` turned into the trie processor and the search it needs.

    `config` comes from resolve_generation_config, which has checked its choices (check_answer_choices).
    The choices set the answer length (the longest choice and eos). A private sampler among the logits
    processors (mmgpt.sampling) means the tokens are drawn, so greedy search is not widened to beams then.
    """
    from mmgpt.sampling import draws_tokens

    choices = getattr(config, ANSWER_CHOICES, None)
    if not choices:
        return config, generate_kwargs
    sequences = choice_token_ids(choices, tokenizer)
    config = copy.deepcopy(config)
    delattr(config, ANSWER_CHOICES)  # transformers' generate knows no such field
    config.max_new_tokens = max(len(ids) for ids in sequences)
    processors = LogitsProcessorList(generate_kwargs.get("logits_processor") or [])
    if not config.do_sample and (config.num_beams or 1) == 1 and len(sequences) > 1 and not draws_tokens(processors):
        # every live trie prefix keeps a beam, and beam scores are summed log-probabilities: an exact search
        # (early_stopping=False: dead beams may end at -inf and must not count as finished answers)
        config.num_beams, config.length_penalty, config.early_stopping = len(sequences), 0.0, False
        config.num_return_sequences = 1
    # first, so a sampler after it draws only among the allowed tokens
    return config, {**generate_kwargs, "logits_processor": LogitsProcessorList(
        [AnswerChoicesLogitsProcessor(sequences, tokenizer.eos_token_id), *processors])}
