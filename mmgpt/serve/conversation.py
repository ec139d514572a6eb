"""OpenAI chat messages -> the model's prompt and its images, through the prompt functions training uses.

One user question becomes what answer() asks (the model's VQA template, mmgpt.inference); a dialogue
becomes what a JSONL `conversations` record trains on (mmgpt.prompts.conversation_prompt). Image parts
are taken out of the text: a request carries one image, or several (in any user messages, across turns)
up to the server's images per prompt, which then come before the prompt in the order they were sent, as
answer(text, images=[...]) puts them. Their URLs are decoded or fetched (`Conversation.images`) only once
the whole request, their count included, has been checked.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from mmgpt import prompts
from mmgpt.inference import check_text, question_prompts
from mmgpt.model import MMGPT
from mmgpt.serve.images import FetchLimits, image_bytes
from mmgpt.serve.schemas import APIError, Message

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Conversation:
    """What one request asks: the model's prompt text, and its images' URLs and where in the request each is."""

    prompt: str
    image_urls: tuple[tuple[str, str], ...]  # (url, param), in the order sent

    @property
    def num_images(self) -> int:
        """How many images the request carries."""
        return len(self.image_urls)

    def images(self, limits: FetchLimits) -> list[tuple[bytes, str]]:
        """Each image's (bytes, param): a data: URL decoded, an http(s) one fetched (if `limits` allow); else
        APIError(400)."""
        return [(image_bytes(url, limits, param), param) for url, param in self.image_urls]


def _text(text: str, param: str) -> str:
    """`text` if it is valid Unicode (as answer() requires), else APIError(400) naming `param`."""
    try:
        return check_text(text, param)
    except ValueError as e:
        raise APIError(400, str(e), param=param, code="invalid_text") from None


def _parts(message: Message, index: int) -> tuple[str, list[tuple[str, str]]]:
    """(the message's text, its image URLs as (url, param)) from a string or a list of text/image_url parts."""
    where = f"messages[{index}].content"
    if message.content is None:
        raise APIError(400, f"{where} is missing", param=where)
    if isinstance(message.content, str):
        return _text(message.content, where), []
    texts, images = [], []
    for j, part in enumerate(message.content):
        param = f"{where}[{j}]"
        if not isinstance(part, dict) or "type" not in part:
            raise APIError(400, f"{param} must be an object with a 'type' (text or image_url)", param=param)
        if part["type"] == "text":
            if not isinstance(part.get("text"), str):
                raise APIError(400, f"{param}.text must be a string", param=f"{param}.text")
            texts.append(_text(part["text"], f"{param}.text"))
        elif part["type"] == "image_url":
            image_url = part.get("image_url")
            if isinstance(image_url, str):
                raise APIError(400, f"{param}.image_url must be an object {{\"url\": \"data:image/png;base64,...\"}}, "
                                    f"not a bare string", param=f"{param}.image_url")
            if not isinstance(image_url, dict) or not isinstance(image_url.get("url"), str):
                raise APIError(400, f"{param}.image_url must be an object with a string 'url'",
                               param=f"{param}.image_url")
            images.append((image_url["url"], f"{param}.image_url"))
        else:
            raise APIError(400, f"{param}.type must be 'text' or 'image_url', got {part['type']!r}",
                           param=f"{param}.type")
    return "\n".join(texts), images


def conversation(model: MMGPT, messages: Sequence[Message], max_images: int = 1) -> Conversation:
    """The prompt and the image URLs (1 to `max_images`) of a request's messages; APIError(400) names what is wrong."""
    turns: list[tuple[str, str]] = []
    images: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        text, found = _parts(message, i)
        if found and message.role != "user":
            # as OpenAI's API: a system or assistant message carries no image (it would be used without its text)
            raise APIError(400, f"messages[{i}]: image_url parts go in user messages, not in a {message.role} message",
                           param=found[0][1])
        images.extend(found)
        if message.role not in prompts.ROLES:
            logger.info("messages[%d]: the model's prompt format has no %r role; that message is left out",
                        i, message.role)
            continue
        turns.append((message.role, text))
    if max_images == 1 and len(images) != 1:
        raise APIError(400, f"a request must carry exactly one image (an image_url content part); got {len(images)}",
                       param="messages", code="one_image_required")
    if not 1 <= len(images) <= max_images:
        raise APIError(400, f"a request must carry 1 to {max_images} images (image_url content parts; the server's "
                            f"--max-images-per-prompt); got {len(images)}", param="messages", code="too_many_images")
    if not turns or turns[-1][0] != "user":
        raise APIError(400, "the last message (of role user or assistant) must be a user message", param="messages")
    if len(turns) == 1:
        prompt = question_prompts(model, [turns[0][1]])[0]
    else:
        prompt = prompts.conversation_prompt(turns)
    return Conversation(prompt=prompt, image_urls=tuple(images))

