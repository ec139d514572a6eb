"""MMGPT: encode text -> encode image -> fuse -> generate.

    prompt --text_encoder--> T (B, Lt, d_text) --+
                                                  +--fusion g--> F (B, Lt, dim) --projector--> prefix
    image --image_encoder--> I (B, Li, d_image) -+

    prefix --generator--> answer
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as functional
from PIL import Image
from torch import nn
from transformers import GenerationConfig

from mmgpt import lora, static_decoding
from mmgpt.config import ConfigError, ModelConfig
from mmgpt.constrained import constrain_to_choices
from mmgpt.decoding import (
    check_answer_length,
    default_generation_config,
    position_ids,
    position_limit,
    resolve_generation_config,
)
from mmgpt.encoders import build_image_encoder, build_text_encoder
from mmgpt.fusion import build_fusion
from mmgpt.fusion.base import ImageLayout
from mmgpt.generator import build_generator
from mmgpt.model_folder import load_model_folder, save_model_folder
from mmgpt.processor import Processor, image_set_inputs
from mmgpt.projector import build_projector, pixel_shuffle
from mmgpt.tokenizer import load_tokenizer, train_tokenizer


def pad_left(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's valid positions to the right end: (B, L, D), (B, L) -> same shapes.

    With the padding on the left, the answer (in training) and generated tokens (in
    inference) follow the prefix directly, so both see identical positions.
    """
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
    return x.gather(1, order.unsqueeze(-1).expand_as(x)), mask.gather(1, order)


def unique_images(pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, 3, H, W) -> the distinct images (N, 3, H, W) and each row's index into them (B,), or None if all differ.

    VQA batches often ask several questions about one image; encoding it once saves that work,
    and the gradient of every question still reaches the encoder through the gather.
    """
    flat = pixel_values.flatten(1).float()
    # key: a weighted sum of every 7th pixel's bits in wrapping int64 arithmetic. Exact, so equal images
    # always get equal keys (a float matmul may round two equal rows differently), and about 1 ms a batch;
    # the comparison below catches two different images that share a key
    bits = flat[:, ::7].contiguous().view(torch.int32).to(torch.int64)
    weights = torch.arange(bits.shape[1], device=flat.device, dtype=torch.int64) * 2654435761 + 1
    keys, inverse = torch.unique((bits * weights).sum(dim=1), return_inverse=True)
    if len(keys) == len(flat):
        return pixel_values, None
    first = _first_rows(inverse, len(keys))
    if not torch.equal(flat[first][inverse], flat):
        # two different images with one key: the exact row comparison is slower but certain
        rows, inverse = torch.unique(flat, dim=0, return_inverse=True)
        first = _first_rows(inverse, len(rows))
    return pixel_values[first], inverse


def length_groups(text_mask: torch.Tensor, answer_mask: torch.Tensor,
                  min_saving: float = 0.2) -> list[torch.Tensor] | None:
    """The rows of a batch in two groups by answer length, or None when that saves under `min_saving` of the work.

    Each group is padded to its own longest prompt and answer: a batch of one-word answers and long captions
    then pays for caption length only on the captions' rows. Work is counted in padded positions.
    """
    rows = len(answer_mask)
    if rows < 2:
        return None
    text, answer = text_mask.sum(dim=1), answer_mask.sum(dim=1)
    order = torch.argsort(answer, stable=True)
    text, answer = text[order], answer[order]
    # cost of order[:k] and order[k:], k = 1 .. rows - 1, each padded to its own longest text and answer
    head = torch.cummax(text, 0).values + torch.cummax(answer, 0).values
    tail = (torch.cummax(text.flip(0), 0).values + torch.cummax(answer.flip(0), 0).values).flip(0)
    k = torch.arange(1, rows, device=answer.device)
    costs = k * head[:-1] + (rows - k) * tail[1:]
    best = int(torch.argmin(costs))
    if costs[best] > (1 - min_saving) * rows * (text.max() + answer.max()):
        return None
    return [order[: best + 1].sort().values, order[best + 1 :].sort().values]


def _first_rows(inverse: torch.Tensor, count: int) -> torch.Tensor:
    """For each of `count` groups, the index of one row that belongs to it."""
    first = torch.empty(count, dtype=torch.long, device=inverse.device)
    return first.scatter_(0, inverse, torch.arange(len(inverse), device=inverse.device))


class GeneratorInputs(NamedTuple):
    """What the generator reads: the left-padded prefix, then the embeddings of some tokens (bos, answer, ...)."""

    inputs_embeds: torch.Tensor  # (B, Lf + N, width)
    attention_mask: torch.Tensor  # (B, Lf + N)
    position_ids: torch.Tensor  # (B, Lf + N)
    prefix_mask: torch.Tensor  # (B, Lf): the tokens start at prefix_mask.shape[1]


@dataclass
class MMGPTOutput:
    """Loss pieces and logits of one forward pass."""

    loss: torch.Tensor  # mean over supervised answer tokens of the batch
    loss_sum: torch.Tensor  # sum over supervised tokens, for exact averaging across ranks/micro-batches
    num_tokens: torch.Tensor  # number of supervised tokens
    per_example_loss: torch.Tensor  # (B,) mean token loss of each example
    # (B, La - 1, vocab): prediction of answer token t+1 at position t; None when the batch was split by length
    logits: torch.Tensor | None


class MMGPT(nn.Module):
    """A vision-language generator: F = g(T, I) is projected and used as the generator's prefix."""

    def __init__(self, config: ModelConfig, processor: Processor, load_weights: bool = True) -> None:
        super().__init__()
        self.config = config
        self.processor = processor
        self.generator = build_generator(config.generator, processor.tokenizer, load_weights=load_weights)
        self.text_encoder = build_text_encoder(
            config.text_encoder, self.generator, processor.tokenizer, load_weights=load_weights
        )
        self.image_encoder = build_image_encoder(config.image_encoder, load_weights=load_weights)
        tiling, shuffle = config.image_encoder.tiling, config.image_encoder.pixel_shuffle
        self.fusion = build_fusion(config.fusion, self.text_encoder.output_dim,
                                   self.image_encoder.output_dim * shuffle * shuffle, config.max_images, tiling.views)
        processor.tiling = (tiling.rows, tiling.cols)
        width = self.generator.get_input_embeddings().embedding_dim
        self.projector = build_projector(config.projector, config.fusion.dim, width)
        lora.add_adapters(self, config)
        # the autocast dtype of the image encoder's training forward (TrainConfig.image_encoder_autocast); not
        # part of the model: eval mode and the saved model ignore it
        self.train_image_autocast: torch.dtype | None = None

    @classmethod
    def from_config(
        cls,
        config: ModelConfig,
        train_texts: Iterable[str] | None = None,
        load_weights: bool = True,
        tokenizer: Any = None,
    ) -> MMGPT:
        """Build a model and its processor.

        The tokenizer is `tokenizer` when given, else the named generator's, else one trained on `train_texts`.
        """
        if tokenizer is None:
            if config.generator.name:
                tokenizer = load_tokenizer(config.generator.name)
            elif train_texts is None:
                raise ConfigError(
                    "model.generator has no 'name', so its tokenizer is trained from scratch: pass train_texts "
                    "(the training prompts and answers) or name a pretrained generator"
                )
            else:
                tokenizer = train_tokenizer(train_texts, config.tokenizer)
        processor = Processor(
            tokenizer,
            image_transform=None,
            max_prompt_length=config.text_encoder.max_length,
            max_answer_length=config.max_answer_length,
            chat_template=config.chat_template,
            system_prompt=config.system_prompt,
        )
        model = cls(config, processor, load_weights=load_weights)
        # the encoders decide the preprocessing, so the processor is completed from them
        processor.image_transform = model.image_encoder.image_transform()
        processor.text_tokenizer = model.text_encoder.tokenizer
        return model

    def encode_images(self, pixel_values: torch.Tensor, share_images: bool = True) -> torch.Tensor:
        """The image encoder's tokens: (B, 3, H, W) -> (B, Li, D).

        With `share_images` each distinct image of the batch is encoded once (an exported graph cannot hold
        that data-dependent shortcut).
        """
        # pixels arrive as float32 from the processor; a model cast to bf16/fp16 needs them in its dtype, and
        # frozen parts may be kept in another dtype than the trained ones (TrainConfig.frozen_dtype)
        dtype = _dtype(self.projector, torch.float32)  # an int8 projector has no floating-point parameter
        pixel_values = pixel_values.to(_dtype(self.image_encoder, dtype))
        pixels, image_index = unique_images(pixel_values) if share_images else (pixel_values, None)
        # TrainConfig.image_encoder_autocast: a training-time choice, so evaluation and inference stay exact
        autocast = self.train_image_autocast if self.training and self.image_encoder.training else None
        with torch.autocast(pixels.device.type, dtype=autocast) if autocast else contextlib.nullcontext():
            image = self.image_encoder(pixels)
        if self.config.image_encoder.pixel_shuffle > 1:
            image = pixel_shuffle(image, self.config.image_encoder.pixel_shuffle)
        return image if image_index is None else image[image_index]

    def fused_prefix(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None,
        image_features: torch.Tensor | None = None, share_images: bool = True, *,
        image_mask: torch.Tensor | None = None, image_slots: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode text, encode image, fuse, project: (B, Lt), (B, Lt), (B, 3, H, W) -> (B, Lf, width), (B, Lf).

        The fusion's positions in its own order, not yet left-padded. The image goes through `encode_images`
        (`share_images`), unless its output (B, Li, D) is given as `image_features` (then `pixel_values` may be
        None). Several images per prompt: pixel_values (B, K, 3, H, W) with image_mask (B, K) (0: padding) and
        image_slots (B, K) (the prompt token each image goes before; default 0, all images first), as the
        Processor makes them; `image_features` is then (B, K, Li, D) when given.
        """
        text, text_mask = self.text_encoder(input_ids, attention_mask)
        several = pixel_values.dim() == 5 if image_features is None else image_features.dim() == 4
        if not several and self.config.image_encoder.tiling.views > 1:
            raise ValueError("this model splits each image into tiles (model.image_encoder.tiling): build its "
                             "batches with its processor, which gives pixel_values (B, K, 3, H, W)")
        if not several and self.config.max_images > 1:
            # one image each, read as a set of one: the same prefix as in a batch that mixes image counts
            pixel_values = None if pixel_values is None else pixel_values[:, None]
            image_features = None if image_features is None else image_features[:, None]
            several = True
        layout = None
        if several:
            image, layout = self._encode_image_sets(pixel_values, image_mask, image_slots, image_features,
                                                    share_images)
        else:
            image = self.encode_images(pixel_values, share_images) if image_features is None else image_features
        dtype = _dtype(self.projector, torch.float32)
        fusion_dtype = _dtype(self.fusion, dtype)
        fused, fused_mask = self.fusion(text.to(fusion_dtype), text_mask, image.to(fusion_dtype), layout)
        return self.projector(fused.to(dtype)), fused_mask

    def _encode_image_sets(self, pixel_values: torch.Tensor | None, image_mask: torch.Tensor | None,
                           image_slots: torch.Tensor | None, image_features: torch.Tensor | None = None,
                           share_images: bool = True) -> tuple[torch.Tensor, ImageLayout]:
        """(B, K, 3, H, W) (or their outputs (B, K, Li, D)) -> every image's tokens one image after another
        (B, K * Li, d_image) and their layout."""
        given = pixel_values if image_features is None else image_features
        batch, count = given.shape[:2]
        if image_mask is None:
            image_mask = torch.ones(batch, count, dtype=torch.long, device=given.device)
        if image_slots is None:
            image_slots = torch.zeros(batch, count, dtype=torch.long, device=given.device)
        if image_features is None and not share_images:
            # an exported graph cannot select the present images (a data-dependent shape): every entry is
            # encoded and padding zeroed, which gives the real images' tokens the same values
            encoded = self.encode_images(pixel_values.flatten(0, 1), share_images=False)
            image = encoded.unflatten(0, (batch, count)) * image_mask[:, :, None, None].to(encoded.dtype)
        else:
            image = (self.image_set_features(pixel_values, image_mask, share_images) if image_features is None
                     else image_features.masked_fill(~image_mask.bool()[:, :, None, None], 0))
        layout = ImageLayout(mask=image_mask, slots=image_slots, tokens_per_image=image.shape[2],
                             views=self.config.image_encoder.tiling.views)
        return image.flatten(1, 2), layout

    def image_set_features(self, pixel_values: torch.Tensor, image_mask: torch.Tensor | None = None,
                           share_images: bool = True) -> torch.Tensor:
        """Several images per prompt (B, K, 3, H, W) -> their tokens (B, K, Li, D), zeros where image_mask is 0.

        Padding is never encoded; one image per prompt (B, 3, H, W) gives `encode_images`' (B, Li, D).
        """
        if pixel_values.dim() == 4:
            return self.encode_images(pixel_values, share_images)
        present = (torch.ones(pixel_values.shape[:2], dtype=torch.bool, device=pixel_values.device)
                   if image_mask is None else image_mask.bool())
        encoded = self.encode_images(pixel_values[present], share_images)
        image = encoded.new_zeros(*present.shape, *encoded.shape[1:])
        image[present] = encoded
        return image

    def prefix_embeds(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None,
        image_features: torch.Tensor | None = None, *, image_mask: torch.Tensor | None = None,
        image_slots: torch.Tensor | None = None, share_images: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The generator's prefix: (B, Lt), (B, Lt), (B, 3, H, W) -> prefix_embeds (B, Lf, width), prefix_mask (B, Lf).

        `fused_prefix`, left-padded (`pad_left`).
        """
        return pad_left(*self.fused_prefix(input_ids, attention_mask, pixel_values, image_features, share_images,
                                           image_mask=image_mask, image_slots=image_slots))

    def generator_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None,
        token_ids: torch.Tensor | None = None, token_mask: torch.Tensor | None = None,
        image_features: torch.Tensor | None = None, *, image_mask: torch.Tensor | None = None,
        image_slots: torch.Tensor | None = None, share_images: bool = True,
    ) -> GeneratorInputs:
        """The prefix followed by `token_ids` (B, N) (mask `token_mask`, default all ones), as the generator reads it.

        Training (bos + answer), generation (bos, the default) and explanation (bos + answer) build their input here;
        `image_mask`, `image_slots` and `share_images` as in `fused_prefix`.
        """
        if token_ids is None:
            token_ids = torch.full((input_ids.shape[0], 1), self.processor.tokenizer.bos_token_id, dtype=torch.long,
                                   device=input_ids.device)
        prefix, prefix_mask = self.prefix_embeds(input_ids, attention_mask, pixel_values, image_features,
                                                 image_mask=image_mask, image_slots=image_slots,
                                                 share_images=share_images)
        token_embeds = self.generator.get_input_embeddings()(token_ids)
        inputs_embeds = torch.cat([prefix.to(token_embeds.dtype), token_embeds], dim=1)
        token_mask = torch.ones_like(token_ids) if token_mask is None else token_mask
        mask = torch.cat([prefix_mask, token_mask], dim=1)
        return GeneratorInputs(inputs_embeds, mask, position_ids(mask), prefix_mask)

    @property
    def max_positions(self) -> int | None:
        """How many positions the generator reads (prefix, bos and answer together); None when unlimited."""
        return position_limit(self.generator.config)

    def prefix_length(self, text_tokens: int, num_images: int = 1) -> int:
        """Positions the prefix of a prompt of `text_tokens` tokens (processor ids) and `num_images` images takes.

        The fusion's mask decides it (the text's length, or more for a fusion that adds the image's tokens);
        the image encoder's token count is read once, from a blank image of the processor's size.
        """
        image_tokens = self.__dict__.get("_image_tokens")
        if image_tokens is None:
            pixels = self.processor.image_tensor(Image.new("RGB", (8, 8)))
            pixels = pixels.reshape(-1, *pixels.shape[-3:])[:1]  # one view
            pixels = pixels.to(next(self.parameters()).device, _dtype(self.image_encoder, torch.float32))
            with torch.no_grad():
                image_tokens = self.encode_images(pixels).shape[1]
            self.__dict__["_image_tokens"] = image_tokens
        text_mask = torch.ones(1, text_tokens, dtype=torch.long)
        views = self.config.image_encoder.tiling.views
        entries = num_images * views
        layout = None if entries == 1 else ImageLayout(torch.ones(1, entries, dtype=torch.long),
                                                       torch.zeros(1, entries, dtype=torch.long), image_tokens, views)
        image = torch.zeros(1, image_tokens * entries, self.fusion.dim)
        return int(self.fusion.images_mask(text_mask, image, layout).sum())

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        answer_ids: torch.Tensor,
        answer_mask: torch.Tensor,
        image_mask: torch.Tensor | None = None,
        image_slots: torch.Tensor | None = None,
        split_lengths: bool = False,
    ) -> MMGPTOutput:
        """Teacher-forced answer loss; only answer tokens after bos are supervised (several images: fused_prefix).

        `split_lengths`: where `length_groups` finds it worth it, the images are encoded together and the rest
        runs once per group of answer lengths, each group padded to its own length. The loss and its gradient
        are the same (up to rounding); `logits` is then None.
        """
        groups = length_groups(attention_mask, answer_mask) if split_lengths else None
        if groups is None:
            return self._answer_loss(input_ids, attention_mask, pixel_values, answer_ids, answer_mask,
                                     image_mask=image_mask, image_slots=image_slots)
        # one pass of the image encoder, so its batch-norm statistics are those of the whole batch
        features = self.image_set_features(pixel_values, image_mask)
        outs = []
        for rows in groups:
            text_length = int(attention_mask[rows].any(dim=0).nonzero().max()) + 1
            answer_length = int(answer_mask[rows].any(dim=0).nonzero().max()) + 1
            outs.append(self._answer_loss(
                input_ids[rows, :text_length], attention_mask[rows, :text_length], None,
                answer_ids[rows, :answer_length], answer_mask[rows, :answer_length], image_features=features[rows],
                image_mask=None if image_mask is None else image_mask[rows],
                image_slots=None if image_slots is None else image_slots[rows]))
        loss_sum = sum(out.loss_sum for out in outs)
        num_tokens = sum(out.num_tokens for out in outs)
        per_example = torch.empty(len(answer_ids), device=answer_ids.device, dtype=outs[0].per_example_loss.dtype)
        per_example[torch.cat(groups)] = torch.cat([out.per_example_loss for out in outs])
        return MMGPTOutput(loss=loss_sum / num_tokens.clamp(min=1), loss_sum=loss_sum, num_tokens=num_tokens,
                           per_example_loss=per_example, logits=None)

    def _answer_loss(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None,
        answer_ids: torch.Tensor, answer_mask: torch.Tensor, image_features: torch.Tensor | None = None, *,
        image_mask: torch.Tensor | None = None, image_slots: torch.Tensor | None = None,
    ) -> MMGPTOutput:
        inputs = self.generator_inputs(input_ids, attention_mask, pixel_values, answer_ids, answer_mask,
                                       image_features, image_mask=image_mask, image_slots=image_slots)
        out = self.generator(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            use_cache=False,
            logits_to_keep=answer_ids.shape[1],
        )
        logits = out.logits[:, :-1]
        targets = answer_ids[:, 1:].masked_fill(answer_mask[:, 1:] == 0, -100)
        token_loss = functional.cross_entropy(
            logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none"
        )
        counts = (targets != -100).sum(dim=1)
        loss_sum = token_loss.sum()
        num_tokens = counts.sum()
        return MMGPTOutput(
            loss=loss_sum / num_tokens.clamp(min=1),
            loss_sum=loss_sum,
            num_tokens=num_tokens,
            per_example_loss=token_loss.sum(dim=1) / counts.clamp(min=1),
            logits=logits,
        )

    @property
    def generation_config(self) -> GenerationConfig:
        """How generate() decodes by default: the saved generation_config.json, else greedy up to max_answer_length."""
        saved = self.__dict__.get("_generation_config")
        return saved if saved is not None else default_generation_config(self.config, self.processor.tokenizer)

    @generation_config.setter
    def generation_config(self, config: GenerationConfig) -> None:
        self.__dict__["_generation_config"] = config

    @torch.no_grad()
    def generate_batch(self, batch: dict[str, Any], **generate_kwargs: Any) -> torch.Tensor:
        """generate() on a processor batch: its prompts, images and, where it has them, several images' slots."""
        return self.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                             **image_set_inputs(batch), **generate_kwargs)

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None,
        generation_config: GenerationConfig | None = None,
        image_features: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        image_slots: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Decode answers with the generator's own `generate` (KV cache, beams, sampling) -> new token ids (B, N).

        `image_features`: the image encoder's output (B, Li, D) when already at hand (`encode_images`); then
        `pixel_values` may be None.

        `generation_config` and GenerationConfig fields given as keywords update self.generation_config
        (mmgpt.decoding.resolve_generation_config); other keywords (`streamer`, ...) go to `generate`.
        Several images per prompt: `image_mask` and `image_slots` as in fused_prefix.
        """
        config, generate_kwargs = resolve_generation_config(self.generation_config, generation_config,
                                                            **generate_kwargs)
        config, generate_kwargs = constrain_to_choices(config, generate_kwargs, self.processor.tokenizer)
        if config.max_new_tokens == 0:
            return torch.empty((input_ids.shape[0], 0), dtype=torch.long, device=input_ids.device)
        inputs = self.generator_inputs(input_ids, attention_mask, pixel_values, image_features=image_features,
                                       image_mask=image_mask, image_slots=image_slots)
        check_answer_length(config.max_new_tokens, int(inputs.prefix_mask.sum(1).max()), self.max_positions)
        if static_decoding.supports(self.generator, config, generate_kwargs):
            # greedy or seeded sampling: the same tokens with far fewer ops per step (CPU decoding is op-bound)
            return static_decoding.generate(self.generator, inputs.inputs_embeds, inputs.attention_mask, config,
                                            **generate_kwargs)
        with warnings.catch_warnings():
            # the prompt is embeddings, so penalties apply to generated tokens only, as intended
            warnings.filterwarnings("ignore", message=r"Passing `(no_repeat_ngram_size|repetition_penalty)`")
            return self.generator.generate(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                                           generation_config=config, **generate_kwargs)

    @property
    def _no_split_modules(self) -> list[str]:
        """Layer classes its Hugging Face parts name as units: what FSDP (TRANSFORMER_BASED_WRAP) shards one by one."""
        names = {name for module in self.modules() if module is not self
                 for name in getattr(module, "_no_split_modules", None) or ()}
        return sorted(names)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Parameter count (each shared tensor counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def save_pretrained(self, folder: str | Path, merge_lora: bool = True, metrics: dict | None = None,
                        datasets: list[str] | None = None, overwrite: bool = True,
                        compression: dict | None = None) -> None:
        """Write the model folder: config, weights, processor, part configs, card (model_folder.save_model_folder)."""
        save_model_folder(self, folder, merge_lora=merge_lora, metrics=metrics, datasets=datasets,
                          overwrite=overwrite, compression=compression)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device | None = None) -> MMGPT:
        """Load a model saved by save_pretrained from its folder alone; `hf://org/name` downloads one first."""
        return load_model_folder(cls, folder, device)


def _dtype(module: nn.Module, default: torch.dtype) -> torch.dtype:
    """The dtype of a module's first floating-point parameter; `default` when it has none."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), default)


