"""Token limits without encoding all of a long text: the head or the tail of a text's token ids.

torch-free, so the ONNX runtime (mmgpt.runtime) truncates prompts exactly as the Processor does.
"""
from __future__ import annotations

from typing import Any

# A generous bound on the characters one token covers: a text is cut to (limit + TOKEN_MARGIN) *
# CHARS_PER_TOKEN characters before tokenizing, so a 10 MB prompt costs what a short one does. The cut can
# only change the tokens next to it, and TOKEN_MARGIN of them lie beyond the limit, so the kept tokens are
# exactly those of the whole text.
CHARS_PER_TOKEN = 32
TOKEN_MARGIN = 16


def char_budget(max_tokens: int) -> int:
    """Characters of a text that are tokenized at first when at most `max_tokens` tokens are kept."""
    return (max_tokens + TOKEN_MARGIN) * CHARS_PER_TOKEN


def head_token_ids(encode: Any, text: str, max_tokens: int) -> tuple[list[int], bool]:
    """encode(text)[:max_tokens] without encoding all of a long text -> (ids, whether tokens were cut off)."""
    budget = char_budget(max_tokens)
    while True:
        head = text[:budget]
        ids = encode(head)
        if len(head) == len(text) or len(ids) >= max_tokens + TOKEN_MARGIN:
            break
        # few tokens per character (long whitespace runs, marks a normalizer drops): look further
        budget *= 4
    return ids[:max_tokens], len(ids) > max_tokens


def tail_token_ids(encode: Any, text: str, max_tokens: int) -> tuple[list[int], int, bool]:
    """The leading special tokens of encode(text) plus its last tokens, max_tokens in all -> (ids, total, exact).

    total is len(encode(text)) when exact, else a lower bound over max_tokens: a long text has only its end
    encoded, so a 10 MB prompt costs what a short one does.
    """
    budget = char_budget(max_tokens)
    while True:
        tail = text[-budget:]
        ids = encode(tail)
        whole = len(tail) == len(text)
        if whole or len(ids) >= max_tokens + TOKEN_MARGIN:
            break
        budget *= 4
    if len(ids) <= max_tokens:
        return ids, len(ids), whole
    # what encode puts in front of any text (bos, [CLS]) stays in front; trailing ones ([SEP]) end the kept part
    empty = encode("")
    lead = 0
    while lead < min(len(empty), len(ids), max_tokens) and ids[lead] == empty[lead]:
        lead += 1
    return ids[:lead] + ids[len(ids) - (max_tokens - lead):], len(ids), whole
