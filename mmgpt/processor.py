"""One object that owns the tokenizer(s) and the image transform.

Training, evaluation and answer() all go through `Processor`, so they preprocess identically.
"""
from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from mmgpt.config import load_json
from mmgpt.data.example import Example
from mmgpt.encoders import ImageTransform, load_transform
from mmgpt.hf_models import load_hf_tokenizer
from mmgpt.images import DEFAULT_MAX_PIXELS, load_image, tile_views
from mmgpt.prompts import IMAGE_SLOT, chat_prompt
from mmgpt.saving import write_json
from mmgpt.tokenizer import ensure_special_tokens
from mmgpt.truncation import char_budget, head_token_ids, tail_token_ids

logger = logging.getLogger(__name__)

IDS_CACHE_SIZE = 16_384  # token-id lists kept, least recently used dropped first
IMAGE_SET_KEYS = ("image_mask", "image_slots")  # what a batch of several images per prompt adds


def image_set_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments MMGPT.generate takes for several images per prompt, where the batch has them."""
    return {key: batch[key] for key in IMAGE_SET_KEYS if key in batch}


def pad_sequences(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad lists of token ids -> ids (B, L) and attention mask (B, L)."""
    length = max(1, max(len(s) for s in sequences))
    # one tensor from padded lists: a copy per row took 6 ms of a 128-row training batch's 12 ms of loading
    ids = torch.tensor([[*seq, *[pad_id] * (length - len(seq))] for seq in sequences], dtype=torch.long)
    mask = torch.tensor([[1] * len(seq) + [0] * (length - len(seq)) for seq in sequences], dtype=torch.long)
    return ids, mask


class Processor:
    """Tokenizes prompts and answers and turns images into pixel tensors for one model."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_transform: ImageTransform | None,
        text_tokenizer: PreTrainedTokenizerBase | None = None,
        max_prompt_length: int = 64,
        max_answer_length: int = 48,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        chat_template: bool = False,
        system_prompt: str = "",
    ) -> None:
        ensure_special_tokens(tokenizer)
        # prompts through the generator tokenizer's chat template, when it has one (mmgpt.prompts.chat_prompt)
        self.chat_template = chat_template
        self.system_prompt = system_prompt
        self._ids_cache: OrderedDict[tuple, tuple[int, ...]] = OrderedDict()
        self._ids_lock = threading.Lock()  # answer() may tokenize from several threads
        self.tokenizer = tokenizer
        # None: the text encoder reads the generator's tokens
        self.text_tokenizer = text_tokenizer
        self.image_transform = image_transform
        self.max_prompt_length = max_prompt_length
        self.max_answer_length = max_answer_length
        self.max_image_pixels = max_image_pixels
        # (rows, cols) of model.image_encoder.tiling, set by the model it serves; (0, 0): one view per image
        self.tiling = (0, 0)

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        """The generator's tokenizer (answers, and prompts when there is no text tokenizer)."""
        return self._tokenizer

    @tokenizer.setter
    def tokenizer(self, value: PreTrainedTokenizerBase) -> None:
        self._tokenizer = value
        self._clear_cache()

    @property
    def text_tokenizer(self) -> PreTrainedTokenizerBase | None:
        """The text encoder's own tokenizer, or None when it reads the generator's tokens."""
        return self._text_tokenizer

    @text_tokenizer.setter
    def text_tokenizer(self, value: PreTrainedTokenizerBase | None) -> None:
        self._text_tokenizer = value
        self._clear_cache()

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of one prompt for the text encoder; a long one keeps its leading special token and its end."""
        return self._cached("prompt", prompt, self._tokenize_prompt)

    def _cached(self, kind: str, text: str, tokenize: Any) -> list[int]:
        # VQA datasets repeat the same questions and answers many times: tokenizing each once
        # saves ~5% of a CPU training step. Texts longer than any budget are not kept: they are rare, and
        # as keys they would hold megabytes each.
        if len(text) > char_budget(max(self.max_prompt_length, self.max_answer_length)):
            return tokenize(text)
        key = (kind, text, self.max_prompt_length, self.max_answer_length, self.uses_chat_template,
               self.system_prompt)
        with self._ids_lock:
            ids = self._ids_cache.get(key)
            if ids is not None:
                self._ids_cache.move_to_end(key)
                return list(ids)
        ids = tokenize(text)
        with self._ids_lock:
            self._ids_cache[key] = tuple(ids)
            if len(self._ids_cache) > IDS_CACHE_SIZE:
                self._ids_cache.popitem(last=False)
        return ids

    def _clear_cache(self) -> None:
        with self._ids_lock:
            self._ids_cache.clear()

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the lock and the cache (a copy starts with an empty one)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_ids_cache", "_ids_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled Processor with a fresh, empty cache."""
        self.__dict__.update(state, _ids_cache=OrderedDict(), _ids_lock=threading.Lock())

    @property
    def uses_chat_template(self) -> bool:
        """Whether prompts go through the chat template: asked for, the tokenizer has one, and the generator's
        tokens are what the text encoder reads."""
        return self.chat_template and self.text_tokenizer is None and bool(getattr(self.tokenizer, "chat_template",
                                                                                   None))

    def _prompt_encoder(self) -> Any:
        if self.uses_chat_template:
            # the template brings its own special tokens (bos, turn markers); the prompt is never empty
            def encode(text: str) -> list[int]:
                rendered = chat_prompt(text, self.tokenizer, self.system_prompt)
                return self.tokenizer.encode(rendered, add_special_tokens=False)
        elif self.text_tokenizer is not None:
            encoder = self.text_tokenizer

            def encode(text: str) -> list[int]:
                return encoder(text, add_special_tokens=True)["input_ids"]
        else:
            # a leading bos keeps the prompt non-empty, so even an empty prompt yields one token of F
            def encode(text: str) -> list[int]:
                return [self.tokenizer.bos_token_id] + self.tokenizer.encode(text, add_special_tokens=False)
        return encode

    def _tokenize_prompt(self, prompt: str) -> list[int]:
        ids, total, exact = tail_token_ids(self._prompt_encoder(), prompt, self.max_prompt_length)
        if total > self.max_prompt_length:
            # the end of a dialogue holds the question being asked, so a long prompt loses its beginning
            logger.warning(
                "prompt of %d characters truncated to the text encoder's limit of %d tokens: kept the last %d of "
                "%s%d tokens: ...%.60r",
                len(prompt), self.max_prompt_length, len(ids), "" if exact else "more than ", total, prompt[-60:],
            )
        return ids

    def prompt_ids_with_slots(self, prompt: str, num_images: int) -> tuple[list[int], list[int]]:
        """Token ids of a prompt about `num_images` images, and the token each image goes before (0: first).

        A prompt without image slots (mmgpt.prompts.IMAGE_SLOT) has all its images first and is tokenized
        as any prompt; with slots, each piece between them is tokenized on its own and the prompt must fit
        whole, since cutting it would move or drop an image.
        """
        pieces = prompt.split(IMAGE_SLOT)
        if len(pieces) == 1:
            return self.prompt_ids(prompt), [0] * num_images
        if len(pieces) - 1 != num_images:
            raise ValueError(f"prompt has {len(pieces) - 1} image placeholders but {num_images} images: "
                             f"{prompt[:80]!r}")
        if self.text_tokenizer is not None:
            raise ValueError("image placeholders need a text encoder that reads the generator's tokens "
                             "(model.text_encoder.type lm_embeddings); put no placeholder to have the images first")
        ids: list[int] = []
        if self.uses_chat_template:
            pieces = chat_prompt(prompt, self.tokenizer, self.system_prompt).split(IMAGE_SLOT)
        else:
            ids.append(self.tokenizer.bos_token_id)
        slots = []
        for k, piece in enumerate(pieces):
            if k:
                slots.append(len(ids))
            ids += self.tokenizer.encode(piece, add_special_tokens=False)
        if len(ids) > self.max_prompt_length:
            raise ValueError(f"prompt with image placeholders has {len(ids)} tokens, more than the text encoder's "
                             f"limit of {self.max_prompt_length}; it is not cut, as that would move its images: "
                             f"{prompt[:80]!r}")
        return ids, slots

    def prompt_length(self, prompt: str) -> int:
        """Tokens of `prompt` as the text encoder reads it (special tokens included), before truncation."""
        return len(self._prompt_encoder()(prompt))

    def answer_length(self, answer: str) -> int:
        """Tokens of bos + `answer` + eos as the generator is trained on it, before truncation."""
        return len(self.tokenizer.encode(answer, add_special_tokens=False)) + 2

    def answer_ids(self, answer: str) -> list[int]:
        """bos + answer + eos, truncated (keeping eos) to max_answer_length."""
        return self._cached("answer", answer, self._tokenize_answer)

    def _tokenize_answer(self, answer: str) -> list[int]:
        def encode(text: str) -> list[int]:
            return self.tokenizer.encode(text, add_special_tokens=False)

        ids, _ = head_token_ids(encode, answer, max(self.max_answer_length - 2, 0))
        return [self.tokenizer.bos_token_id] + ids + [self.tokenizer.eos_token_id]

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Prompts -> input_ids, attention_mask (B, Lt), right-padded."""
        pad_id = (self.text_tokenizer or self.tokenizer).pad_token_id
        input_ids, attention_mask = pad_sequences([self.prompt_ids(p) for p in prompts], pad_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def encode_answers(self, answers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Answers -> answer_ids, answer_mask (B, La), right-padded."""
        answer_ids, answer_mask = pad_sequences([self.answer_ids(a) for a in answers], self.tokenizer.pad_token_id)
        return {"answer_ids": answer_ids, "answer_mask": answer_mask}

    @property
    def views(self) -> int:
        """Views each image gives: 1, or with tiling the whole image and every tile."""
        return 1 + self.tiling[0] * self.tiling[1]

    def image_tensor(self, image: Any) -> torch.Tensor:
        """Any supported image input (path, bytes, PIL, numpy) -> (3, H, W), or with tiling its views (V, 3, H, W);
        an already-processed tensor passes."""
        if isinstance(image, torch.Tensor):
            return image
        picture = load_image(image, max_pixels=self.max_image_pixels)
        if self.views == 1:
            return self.image_transform(picture)
        whole = self.image_transform(picture)
        tiles = tile_views(picture, tuple(whole.shape[-2:]), *self.tiling)[1:]
        return torch.stack([whole, *(self.image_transform(tile) for tile in tiles)])

    def encode_images(self, images: Sequence[Any]) -> torch.Tensor:
        """Images -> pixel_values (B, 3, H, W)."""
        return torch.stack([self.image_tensor(image) for image in images])

    def encode_image_sets(self, prompts: Sequence[str], image_sets: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Prompts about several images each (a list per prompt; a lone image counts as a list of one) ->
        input_ids, attention_mask (B, Lt), pixel_values (B, K, 3, H, W), image_mask (B, K), image_slots (B, K).

        With tiling, K counts views: image j of a prompt is its views j * V ... (j + 1) * V - 1.
        """
        sets = [list(s) if isinstance(s, (list, tuple)) else [s] for s in image_sets]
        for i, images in enumerate(sets):
            if not images:
                raise ValueError(f"example {i} has an empty list of images")
        ids, slots = zip(*(self.prompt_ids_with_slots(p, len(images)) for p, images in zip(prompts, sets)))
        input_ids, attention_mask = pad_sequences(ids, (self.text_tokenizer or self.tokenizer).pad_token_id)
        views = self.views
        # with tiling each image is its V views, one after another: (V, 3, H, W) -> V rows
        pixels = [torch.cat([self._views(image) for image in images]) for images in sets]
        count = max(len(row) for row in pixels)
        pixel_values = torch.zeros(len(sets), count, *pixels[0].shape[1:])
        image_mask = torch.zeros(len(sets), count, dtype=torch.long)
        image_slots = torch.zeros(len(sets), count, dtype=torch.long)
        for i, (row, row_slots) in enumerate(zip(pixels, slots)):
            pixel_values[i, : len(row)] = row
            image_mask[i, : len(row)] = 1
            image_slots[i, : len(row)] = torch.tensor(row_slots, dtype=torch.long).repeat_interleave(views)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
                "image_mask": image_mask, "image_slots": image_slots}

    def _views(self, image: Any) -> torch.Tensor:
        """An image's views (V, 3, H, W): V = 1 without tiling."""
        pixels = self.image_tensor(image)
        return pixels.reshape(self.views, *pixels.shape[-3:])

    def __call__(
        self, prompts: Sequence[str], images: Sequence[Any], answers: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Prompts, images (and answers, for training) -> a batch dict for MMGPT.

        An image given as a list or tuple is several images for one prompt: the batch then has the keys of
        `encode_image_sets`; with one image per prompt it is exactly as it always was.
        """
        if len(prompts) != len(images):
            raise ValueError(f"got {len(prompts)} prompts but {len(images)} images")
        if self.views > 1 or any(isinstance(image, (list, tuple)) for image in images):
            batch = self.encode_image_sets(prompts, images)
        else:
            batch = {**self.encode_prompts(prompts), "pixel_values": self.encode_images(images)}
        if answers is not None:
            batch.update(self.encode_answers(answers))
        return batch

    def collate(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """Collate Examples (images may be preprocessed tensors) into a training batch."""
        return self([e.prompt for e in examples], [e.image for e in examples], [e.answer for e in examples])

    def decode(self, token_ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """Generated ids (B, L) -> answer strings, stopping at eos."""
        texts = []
        for ids in token_ids:
            ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
            if self.tokenizer.eos_token_id in ids:
                ids = ids[: ids.index(self.tokenizer.eos_token_id)]
            texts.append(self.tokenizer.decode(ids, skip_special_tokens=True).strip())
        return texts

    def save_pretrained(self, folder: str | Path) -> None:
        """Write tokenizer(s), image transform and limits into `folder`."""
        folder = Path(folder)
        self.tokenizer.save_pretrained(folder / "tokenizer")
        if self.text_tokenizer is not None:
            self.text_tokenizer.save_pretrained(folder / "text_tokenizer")
        (folder / "image_transform").mkdir(parents=True, exist_ok=True)
        self.image_transform.save(folder / "image_transform")
        limits = {
            "max_prompt_length": self.max_prompt_length,
            "max_answer_length": self.max_answer_length,
            "max_image_pixels": self.max_image_pixels,
            "chat_template": self.chat_template,
            "system_prompt": self.system_prompt,
        }
        write_json(folder / "processor.json", limits, indent=2)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> Processor:
        """Restore what save_pretrained wrote, reading only `folder` (never the hub)."""
        folder = Path(folder)
        limits = load_json(folder / "processor.json")
        # a folder saved before chat templates were used prompts without them
        chat = {"chat_template": limits.pop("chat_template", False), "system_prompt": limits.pop("system_prompt", "")}
        if not isinstance(chat["chat_template"], bool) or not isinstance(chat["system_prompt"], str):
            raise ValueError(f"{folder / 'processor.json'}: chat_template must be true/false and system_prompt a "
                             f"string, got {chat}")
        names = ("max_prompt_length", "max_answer_length", "max_image_pixels")
        if set(limits) - set(names) or not all(type(v) is int and v > 0 for v in limits.values()):
            raise ValueError(
                f"{folder / 'processor.json'} must map {', '.join(names)} to positive integers, got "
                f"{json.dumps(limits)[:200]}"
            )
        text_tokenizer = None
        if (folder / "text_tokenizer").is_dir():
            text_tokenizer = load_saved_tokenizer(folder / "text_tokenizer")
        return cls(
            load_saved_tokenizer(folder / "tokenizer"),
            load_transform(folder / "image_transform"),
            text_tokenizer=text_tokenizer,
            **limits,
            **chat,
        )


def load_saved_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """A tokenizer written by save_pretrained, read from `folder` alone."""
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise FileNotFoundError(
            f"{folder} holds no tokenizer (tokenizer.json or tokenizer_config.json is missing); "
            "save the model again with save_pretrained"
        )
    try:
        return load_hf_tokenizer(folder, local_files_only=True)
    # the tokenizers library raises a bare Exception for a damaged tokenizer.json
    except Exception as e:
        raise ValueError(f"the tokenizer in {folder} cannot be read: {e}") from e
