"""An `mmgpt export` folder behind the parts of MMGPT that decoding code uses (config, processor, generation
config, prefix lengths, `generate`), answered by mmgpt.runtime's onnxruntime graphs: what `mmgpt serve --model
EXPORTED` serves, and what answer(model=EXPORTED) decodes with when asked to sample or choose.

Requests reach it as they reach a torch model: the same prompts (the export's templates), image views (its own
image transform and tiling) and decoding options. Decoding is the runtime's KV-cache loop; each step's tokens
pass through the logits processors given (mmgpt.sampling's seeded sampler, answer choices) and the stopping
criteria, as in `generate`, and greedy `answer_choices` ranks every choice by its exact log-probability, as the
torch model's exact search does. Options the runtime cannot reproduce (beams, repetition penalties) are a
ValueError naming them. The image encoder runs inside the export's prefix graph: its output is not reused.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

from mmgpt.constrained import ANSWER_CHOICES, AnswerChoicesLogitsProcessor, choice_token_ids
from mmgpt.decoding import resolve_generation_config, set_values
from mmgpt.images import ImageInput
from mmgpt.runtime import OnnxVLM, clean_up_tokenization

# GenerationConfig fields whose set values the runtime's loop reproduces; any other set field is refused
DECODES = frozenset({"max_new_tokens", "do_sample", "bos_token_id", "eos_token_id", "pad_token_id", "num_beams",
                     "temperature", "top_k", "top_p", ANSWER_CHOICES})


class ExportTokenizer:
    """The export's tokenizer with the calls the server makes of a transformers tokenizer (`encode`, `decode`,
    the special token ids)."""

    def __init__(self, vlm: OnnxVLM) -> None:
        self.vlm = vlm
        self.bos_token_id = vlm.tokens["bos_token_id"]
        self.eos_token_id = vlm.tokens["eos_token_id"]
        self.pad_token_id = vlm.generation["pad_token_id"]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`."""
        return self.vlm.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`, as the model folder's tokenizer writes it."""
        text = self.vlm.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if self.vlm.tokens.get("clean_up_tokenization_spaces") else text


class ExportProcessor:
    """The export's preprocessing with the Processor's calls the server makes: prompts, image views, decoding."""

    def __init__(self, vlm: OnnxVLM) -> None:
        self.vlm = vlm
        self.tokenizer = ExportTokenizer(vlm)

    def prompt_ids(self, prompt: str) -> list[int]:
        """The text encoder's ids of one prompt."""
        return self.vlm.prompt_ids(prompt)

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Prompts -> input_ids, attention_mask (B, Lt), right-padded."""
        return {k: torch.from_numpy(v) for k, v in self.vlm.encode_prompts(prompts).items()}

    def image_tensor(self, image: ImageInput) -> torch.Tensor:
        """One image's views: (3, H, W), with tiling (V, 3, H, W); ImageError for an image that cannot be read."""
        views = self.vlm.image_views(image)
        return torch.from_numpy(np.stack(views) if len(views) > 1 else views[0])

    def decode(self, token_ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """Generated ids (B, N) -> answers, stopping at eos."""
        return self.vlm.decode(token_ids.tolist() if isinstance(token_ids, torch.Tensor) else token_ids)

    def pixel_inputs(self, rows: Sequence[Sequence[torch.Tensor]]) -> dict[str, np.ndarray]:
        """Each row's images (views (3, H, W) or (V, 3, H, W)) as the prefix graph takes them: pixel_values
        (B, 3, H, W) for a one-image export, else (B, K, 3, H, W) with image_mask and image_slots (B, K)."""
        if self.vlm.entries is None:
            return {"pixel_values": np.stack([images[0].numpy() for images in rows]).astype(np.float32)}
        return self.vlm.image_set_inputs([np.concatenate([image.reshape(-1, *image.shape[-3:]).numpy()
                                                          for image in images]) for images in rows])

    def __call__(self, prompts: Sequence[str], images: Sequence[ImageInput | Sequence[ImageInput]]
                 ) -> dict[str, torch.Tensor]:
        """A batch as the Processor makes one for generation: prompts (already templated) and each prompt's image
        or list of images -> input_ids, attention_mask, pixel_values (and image_mask, image_slots)."""
        batch = self.encode_prompts(prompts)
        rows = [[self.image_tensor(image) for image in self.image_list(item)] for item in images]
        return {**batch, **{k: torch.from_numpy(v) for k, v in self.pixel_inputs(rows).items()}}

    def image_list(self, item: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
        """One prompt's images: a list of them, or one image; more than the export reads is a ValueError."""
        images = list(item) if isinstance(item, (list, tuple)) else [item]
        if not 1 <= len(images) <= self.vlm.max_images:
            raise ValueError(f"a prompt has {len(images)} images; this export ({self.vlm.folder}) reads 1 to "
                             f"{self.vlm.max_images} per prompt (model.max_images)")
        return images


class ExportedModel:
    """An exported folder served: what mmgpt.serve reads of an MMGPT (config, processor, generation config,
    prefix lengths, `generate`), answered by an OnnxVLM on the CPU."""

    def __init__(self, folder: str | Path, threads: int | None = None) -> None:
        self.vlm = OnnxVLM(folder, threads=threads)
        self.folder = self.vlm.folder
        views = 1 + self.vlm.tiling[0] * self.vlm.tiling[1]
        prompts = self.vlm.manifest["prompts"]
        self.config = SimpleNamespace(max_images=self.vlm.max_images, vqa_template=prompts["vqa_template"],
                                      caption_prompt=prompts["caption_prompt"],
                                      image_encoder=SimpleNamespace(tiling=SimpleNamespace(views=views)))
        self.processor = ExportProcessor(self.vlm)
        generation = self.vlm.generation
        self.generation_config = GenerationConfig(max_new_tokens=generation["max_new_tokens"], do_sample=False,
                                                  bos_token_id=self.vlm.tokens["bos_token_id"],
                                                  eos_token_id=generation["eos_token_id"],
                                                  pad_token_id=generation["pad_token_id"])
        self.max_positions = self.vlm.max_positions
        self.device = torch.device("cpu")
        self._positions: dict[tuple[int, int], int] = {}

    training = False  # an export only answers: eval() and train() switch nothing

    def eval(self) -> ExportedModel:
        """Nothing to switch: an export is for inference only."""
        return self

    def train(self, mode: bool = True) -> ExportedModel:
        """Nothing to switch (callers restore the mode they found, which is eval)."""
        return self

    def generate_batch(self, batch: dict[str, Any], **generate_kwargs: Any) -> torch.Tensor:
        """generate() on a processor batch (ExportProcessor.__call__)."""
        return self.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                             image_mask=batch.get("image_mask"), image_slots=batch.get("image_slots"),
                             **generate_kwargs)

    # ---- inputs ----
    def prefix_length(self, text_tokens: int, num_images: int = 1) -> int:
        """Positions the prefix of `text_tokens` prompt tokens and `num_images` images takes.

        Read from the prefix graph's mask on blank inputs: once for one token and one image, once with a token
        more and (for several images) once with an image more; a fusion's prefix grows by a fixed count per token
        and per image.
        """
        base = self._measured(1, 1)
        per_token = self._measured(2, 1) - base
        per_image = self._measured(1, 2) - base if num_images > 1 else 0
        return base + (text_tokens - 1) * per_token + (num_images - 1) * per_image

    def _measured(self, text_tokens: int, num_images: int) -> int:
        key = (text_tokens, num_images)
        if key not in self._positions:
            transform, vlm = self.vlm.image_transform, self.vlm
            views = self.config.image_encoder.tiling.views
            blank = [torch.zeros(views, 3, transform.height, transform.width) if views > 1 else
                     torch.zeros(3, transform.height, transform.width)] * num_images
            ids = np.full((1, text_tokens), vlm.tokens["bos_token_id"], dtype=np.int64)
            _, mask = vlm.prefix(ids, np.ones_like(ids), **self.processor.pixel_inputs([blank]))
            self._positions[key] = int(mask.sum())
        return self._positions[key]

    # ---- decoding ----
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: np.ndarray | torch.Tensor,
                 generation_config: GenerationConfig | None = None, image_mask: np.ndarray | torch.Tensor | None = None,
                 image_slots: np.ndarray | torch.Tensor | None = None, **generate_kwargs: Any) -> torch.Tensor:
        """New token ids (B, N) as MMGPT.generate decodes them: greedy, or drawn by the logits processors given
        (mmgpt.sampling.seeded_decoding), `answer_choices` exactly; rows end at eos or the stopping criteria; a
        `streamer` (transformers' TextIteratorStreamer) gets each step's tokens."""
        config, kwargs = resolve_generation_config(self.generation_config, generation_config, **generate_kwargs)
        processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
        stopping = StoppingCriteriaList(kwargs.pop("stopping_criteria", None) or [])
        streamer = kwargs.pop("streamer", None)  # transformers' streamer protocol: put(new tokens), then end()
        refused = sorted(set(set_values(config)) - DECODES) + sorted(kwargs)
        if config.do_sample:  # the server hands its sampling to a seeded sampler among the logits processors
            refused.append("do_sample without a seeded sampler")
        if (config.num_beams or 1) > 1:
            refused.append(f"num_beams={config.num_beams}")
        if refused:
            raise ValueError(f"{', '.join(refused)}: an exported ONNX model ({self.folder}) decodes greedily or by "
                             "sampling (temperature, top_p, top_k), with stop strings and answer choices")
        ids, mask = input_ids.numpy(), attention_mask.numpy()
        images = {name: value.numpy() if isinstance(value, torch.Tensor) else value for name, value in
                  (("pixel_values", pixel_values), ("image_mask", image_mask), ("image_slots", image_slots))}
        choices = getattr(config, ANSWER_CHOICES, None)
        if choices:
            sequences = choice_token_ids(choices, self.processor.tokenizer)
            if not processors:  # greedy: the most probable choice, as the torch model's exact beam search finds
                tokens = self._best_choices(ids, mask, images, sequences)
                if streamer is not None:
                    streamer.put(tokens)
                    streamer.end()
                return tokens
            config = copy.deepcopy(config)
            config.max_new_tokens = max(len(s) for s in sequences)
            processors = LogitsProcessorList([AnswerChoicesLogitsProcessor(sequences, self.vlm.tokens["eos_token_id"]),
                                              *processors])

        def choose(tokens: np.ndarray, logits: np.ndarray) -> np.ndarray:
            scores = processors(torch.from_numpy(tokens), torch.from_numpy(np.ascontiguousarray(logits)))
            return scores.argmax(-1).numpy()

        def stop(tokens: np.ndarray) -> np.ndarray:
            if streamer is not None:
                streamer.put(torch.from_numpy(tokens[:, -1]))
            return stopping(torch.from_numpy(tokens), None).numpy() if stopping else np.zeros(len(tokens), bool)

        try:
            tokens = self.vlm.generate(ids, mask, max_new_tokens=config.max_new_tokens,
                                       choose=choose if processors else None,
                                       stop=stop if stopping or streamer is not None else None, **images)
        finally:
            if streamer is not None:
                streamer.end()
        return torch.from_numpy(tokens)

    def _best_choices(self, ids: np.ndarray, mask: np.ndarray, images: dict[str, Any],
                      sequences: list[list[int]]) -> torch.Tensor:
        """Each row's most probable answer choice, padded after its eos -> (B, longest choice)."""
        best = self.vlm.choice_log_probs(ids, mask, choices=sequences, **images).argmax(1)
        tokens = np.full((len(ids), max(len(s) for s in sequences)), self.vlm.generation["pad_token_id"], np.int64)
        for row, choice in enumerate(best):
            tokens[row, : len(sequences[choice])] = sequences[choice]
        return torch.from_numpy(tokens)

