"""The Chat Completions request body, and errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_CHOICES = 16


class APIError(Exception):
    """An error answered with `status` and OpenAI's error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI's clients parse."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class Message(BaseModel):
    """One chat message; `content` parts are checked in mmgpt.serve.conversation, with messages naming the part."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "user", "assistant"]
    content: str | list[Any] | None = None


class StreamOptions(BaseModel):
    """`stream_options`: only include_usage is used."""

    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions; fields OpenAI defines that mmgpt does not use are kept and logged, not refused.

    Types are strict, as OpenAI's API checks them: `"max_tokens": true` or `"5"`, `"stream": "yes"` get 422, not a
    guess at what was meant.
    """

    model_config = ConfigDict(extra="allow", strict=True)

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(default=1, ge=1, le=MAX_CHOICES)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # checked in mmgpt.serve.structured, which answers 400 for any format it cannot guarantee
    response_format: Any = None
    guided_choice: Any = None

    def stop_strings(self) -> list[str]:
        """`stop` as a list of non-empty strings (OpenAI allows up to 4)."""
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, f"stop takes at most 4 sequences, got {len(stops)}", param="stop")
        return [s for s in stops if s]
