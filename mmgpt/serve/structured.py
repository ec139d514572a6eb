"""Constrained answers over the API: `response_format` (a JSON schema whose value is one string enum) and vLLM's
`guided_choice`. Both become the decoding option answer_choices (mmgpt.constrained); anything else is a 400.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mmgpt.serve.schemas import APIError

SUPPORTED = ("response_format {'type': 'text'}, or {'type': 'json_schema'} whose schema is a string with an 'enum' "
             "of strings, or an object of one such required property; or guided_choice, a list of strings")


@dataclass(frozen=True)
class AnswerFormat:
    """The answers a request allows (None: any text) and how the chosen answer is written in the reply."""

    choices: list[str] | None = None
    render: Callable[[str], str] = str


def _answer(value: Any) -> bool:
    """Whether `value` is an answer the model can write as is (answers are read back stripped)."""
    return isinstance(value, str) and bool(value) and value == value.strip()


def _enum(schema: Any, param: str) -> list[str]:
    """The strings of a {'type': 'string', 'enum': [...]} schema, else a 400 naming `param`."""
    if not isinstance(schema, dict) or schema.get("type", "string") != "string" or "enum" not in schema:
        raise APIError(400, f"{param}: unsupported JSON schema; this server takes {SUPPORTED}", param=param,
                       code="unsupported_response_format")
    values = schema["enum"]
    if not isinstance(values, list) or not values or not all(_answer(v) for v in values):
        raise APIError(400, f"{param}.enum must be a non-empty list of non-empty strings without surrounding spaces",
                       param=param)
    return values


def _from_schema(schema: Any) -> AnswerFormat:
    param = "response_format.json_schema.schema"
    if isinstance(schema, dict) and schema.get("type") == "object":
        properties = schema.get("properties")
        if not isinstance(properties, dict) or len(properties) != 1:
            raise APIError(400, f"{param}: an object schema must have exactly one property (a string enum); "
                                f"this server takes {SUPPORTED}", param=param, code="unsupported_response_format")
        (name, value), = properties.items()
        choices = _enum(value, f"{param}.properties.{name}")
        return AnswerFormat(choices, lambda text: json.dumps({name: text}))
    return AnswerFormat(_enum(schema, param), json.dumps)


def answer_format(response_format: Any, guided_choice: Any) -> AnswerFormat:
    """The request's answer format from `response_format` and `guided_choice`; a 400 for what is not supported."""
    if guided_choice is not None and response_format not in (None, {"type": "text"}):
        raise APIError(400, "give either response_format or guided_choice, not both", param="guided_choice")
    if guided_choice is not None:
        if not isinstance(guided_choice, list) or not guided_choice or \
                not all(_answer(v) for v in guided_choice):
            raise APIError(400, "guided_choice must be a non-empty list of non-empty strings without surrounding "
                                "spaces", param="guided_choice")
        return AnswerFormat(guided_choice)
    if response_format is None:
        return AnswerFormat()
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return AnswerFormat()
    if kind == "json_schema":
        json_schema = response_format.get("json_schema")
        if not isinstance(json_schema, dict) or "schema" not in json_schema:
            raise APIError(400, "response_format.json_schema must be an object with a 'schema'",
                           param="response_format.json_schema")
        return _from_schema(json_schema["schema"])
    raise APIError(400, f"response_format type {kind!r} is not supported; this server takes {SUPPORTED}",
                   param="response_format", code="unsupported_response_format")
