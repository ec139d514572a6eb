"""What the worker thread tells a request about its decoding, in order: First, Delta (streaming only), then Done or
Failed."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Choice:
    """One finished answer: text, why it ended ('stop' or 'length') and the tokens it took."""

    text: str
    finish_reason: str
    completion_tokens: int


@dataclass(frozen=True)
class First:
    """The request's first token was generated (its decoding started)."""


@dataclass(frozen=True)
class Delta:
    """New text of choice `index` of a streaming request."""

    index: int
    text: str


@dataclass(frozen=True)
class Done:
    """The request's answers, and the prompt positions (fused text and image) its prefix took."""

    choices: list[Choice]
    prompt_tokens: int


@dataclass(frozen=True)
class Failed:
    """Decoding the request failed; `message` says why."""

    message: str


Event = First | Delta | Done | Failed
