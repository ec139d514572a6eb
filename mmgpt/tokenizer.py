"""Tokenizers: a pretrained generator's own, or a byte-level BPE trained on the training text."""
from __future__ import annotations

import logging
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mmgpt.config import TokenizerConfig
from mmgpt.hf_models import load_hf_tokenizer

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>"}


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (no unknown tokens possible) on `texts`."""
    tokenizer = Tokenizer(models.BPE())
    if cfg.lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)
    logger.info("trained a byte-level BPE tokenizer with %d tokens", len(wrapped))
    return wrapped


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """A pretrained tokenizer by hub name or local folder, with a pad and a bos token guaranteed."""
    tokenizer = load_hf_tokenizer(name, key="model.generator.name")
    ensure_special_tokens(tokenizer)
    return tokenizer


def ensure_special_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    """Many causal-LM tokenizers lack pad (and some bos): reuse eos so no embedding must be added."""
    if tokenizer.eos_token is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no eos token; answers could never end")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
