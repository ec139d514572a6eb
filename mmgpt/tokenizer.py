"""Tokenizers: a pretrained generator's own, or a byte-level BPE trained on the training text.

A trained tokenizer is kept in ``$MMGPT_CACHE/tokenizers``, one JSON file per entry, named by a hash of everything
it depends on: the training text, the tokenizer config, this file's code and the tokenizers / transformers versions.
A run on the same text then reads it instead of training it again. Each file carries its key and a checksum of the
tokenizer; a truncated, altered or foreign file is retrained with a warning, never trusted, and files are written
to a temporary name renamed into place, so processes that write the same entry at once each leave a complete file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mmgpt.config import TokenizerConfig
from mmgpt.hf_models import load_hf_tokenizer

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>"}
CACHE_FORMAT = 1  # bump when an entry's layout or what its key covers changes


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
    wrapped = _wrap(tokenizer)
    logger.info("trained a byte-level BPE tokenizer with %d tokens", len(wrapped))
    return wrapped


def _wrap(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def cached_train_tokenizer(texts: Sequence[str], cfg: TokenizerConfig,
                           root: str | Path | None = None) -> PreTrainedTokenizerFast:
    """train_tokenizer(texts, cfg), read from the cache in `root` ($MMGPT_CACHE/tokenizers) when it trained the same."""
    if root is None:
        from mmgpt.data.records import default_cache_root

        root = default_cache_root() / "tokenizers"
    path = Path(root) / f"{tokenizer_key(texts, cfg)}.json"
    found = _read_entry(path)
    if found is not None:
        logger.info("byte-level BPE tokenizer with %d tokens from the cache %s", len(found), path)
        return found
    trained = train_tokenizer(texts, cfg)
    _write_entry(path, trained.backend_tokenizer.to_str())
    return trained


def tokenizer_key(texts: Sequence[str], cfg: TokenizerConfig) -> str:
    """sha256 of everything a trained tokenizer depends on: the texts in order, cfg, this code, library versions."""
    import tokenizers
    import transformers

    h = hashlib.sha256(json.dumps({
        "format": CACHE_FORMAT, "vocab_size": cfg.vocab_size, "min_frequency": cfg.min_frequency,
        "lowercase": cfg.lowercase, "special_tokens": SPECIAL_TOKENS, "code": _this_code_digest(),
        "versions": [tokenizers.__version__, transformers.__version__]}, sort_keys=True).encode())
    # a JSON list: unambiguous whatever characters the texts hold
    h.update(json.dumps(list(texts), ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _this_code_digest() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _read_entry(path: Path) -> PreTrainedTokenizerFast | None:
    """The tokenizer of cache entry `path`; None when it is missing, or (with a warning) damaged."""
    try:
        entry = json.loads(path.read_bytes())
        tokenizer = entry["tokenizer"]
        if entry["key"] != path.stem or entry["format"] != CACHE_FORMAT:
            raise ValueError("the entry belongs to another key")
        if entry["checksum"] != hashlib.sha256(tokenizer.encode("utf-8", "surrogatepass")).hexdigest():
            raise ValueError("checksum mismatch")
        return _wrap(Tokenizer.from_str(tokenizer))
    except FileNotFoundError:
        return None
    except Exception as e:  # noqa: BLE001 - tokenizers reports a malformed tokenizer as a plain Exception
        logger.warning("tokenizer cache %s is damaged (%s: %s); training the tokenizer again", path,
                       type(e).__name__, e)
        return None


def _write_entry(path: Path, tokenizer: str) -> None:
    """Store a trained tokenizer as cache entry `path`, atomically; a failure to write is only a warning."""
    entry = {"format": CACHE_FORMAT, "key": path.stem, "tokenizer": tokenizer,
             "checksum": hashlib.sha256(tokenizer.encode("utf-8", "surrogatepass")).hexdigest()}
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(entry), encoding="utf-8")
        os.replace(tmp, path)  # atomic: a reader sees the old file, the new one or none
    except OSError as e:
        logger.warning("could not write the tokenizer cache %s: %s", path, e)
        tmp.unlink(missing_ok=True)


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
