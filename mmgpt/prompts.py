"""The text a model is prompted with: one question through the templates, or a dialogue as User:/Assistant: lines.

Training data (the dataset readers) and answer() build prompts here, so a model is asked in the format it
was trained on. A dialogue ``[user "What is this?", assistant "A bus.", user "What color?"]`` becomes::

    User: What is this?
    Assistant: A bus.
    User: What color?

one ``Role: content`` line per message, joined by newlines, with nothing after the last one; the answer
is the generator's output, not part of the prompt.

When the generator's tokenizer has a chat template (instruct models), the Processor turns such a prompt
back into messages (`prompt_messages`) and renders them with the template (`chat_prompt`), so training,
answer(), evaluation and the server all prompt an instruct model in its own format.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mmgpt.config import PromptTemplates

ROLES = ("user", "assistant")
# Where an image goes in a prompt (U+FFFC, Unicode's "object replacement character"). Data formats write
# IMAGE_PLACEHOLDER in their files (`with_image_slots`); text a user types never holds a slot, because every
# question and message passes through `text_only`, so a typed "<image>" stays text.
IMAGE_SLOT = "\ufffc"
IMAGE_PLACEHOLDER = "<image>"


def text_only(text: str) -> str:
    """`text` as plain text: any image slot character removed."""
    return text.replace(IMAGE_SLOT, "")


def with_image_slots(prompt: str) -> str:
    """A data file's prompt with each IMAGE_PLACEHOLDER made an image slot (and nothing else one)."""
    return text_only(prompt).replace(IMAGE_PLACEHOLDER, IMAGE_SLOT)


def question_prompt(question: str, templates: PromptTemplates) -> str:
    """A single question through the VQA template; an empty (or blank) question asks for a caption."""
    question = text_only(question).strip()
    return templates.caption if not question else templates.vqa.format(question=question)


def _role_content(message: Any, index: int) -> tuple[str, str]:
    """(role, content) of a {"role", "content"} mapping or a (role, content) pair, checked."""
    if isinstance(message, Mapping):
        role, content = message.get("role"), message.get("content")
    elif isinstance(message, (tuple, list)) and len(message) == 2:
        role, content = message
    else:
        raise TypeError(f"messages[{index}] must be a {{'role', 'content'}} object or a (role, content) pair, "
                        f"got {type(message).__name__}")
    if role not in ROLES:
        raise ValueError(f"messages[{index}]: role must be one of {ROLES}, got {role!r}")
    if not isinstance(content, str):
        raise TypeError(f"messages[{index}]: content must be a str, got {type(content).__name__}")
    return role, content


def conversation_prompt(messages: Sequence[Any]) -> str:
    """The dialogue so far as "User: ...\\nAssistant: ...\\nUser: ...", the multi-turn prompt format."""
    turns = [_role_content(message, i) for i, message in enumerate(messages)]
    return "\n".join(f"{role.capitalize()}: {text_only(content)}" for role, content in turns)


def prompt_messages(prompt: str, system_prompt: str = "") -> list[dict[str, str]]:
    """A prompt as chat messages: "User: ..."/"Assistant: ..." lines as turns, anything else one user turn."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    prefixes = {f"{role.capitalize()}: ": role for role in ROLES}
    if not prompt.startswith("User: "):
        return messages + [{"role": "user", "content": prompt}]
    turns: list[dict[str, str]] = []
    for line in prompt.split("\n"):
        role = next((r for p, r in prefixes.items() if line.startswith(p)), None)
        if role is None:
            # a line break inside one message
            turns[-1]["content"] += "\n" + line
        else:
            turns.append({"role": role, "content": line[len("User: ") if role == "user" else len("Assistant: "):]})
    return messages + turns


def chat_prompt(prompt: str, tokenizer: Any, system_prompt: str = "") -> str:
    """The prompt rendered by the tokenizer's chat template, ending with the assistant's turn opened."""
    return tokenizer.apply_chat_template(prompt_messages(prompt, system_prompt), tokenize=False,
                                         add_generation_prompt=True)
