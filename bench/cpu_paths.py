"""The non-torch-model paths bench/cpu_inference.py times beside mmgpt's eager ones: ONNX exports and a peer.

* ``onnx``, ``onnx-int8``: the model exported with ``mmgpt export`` (``--int8``) and answered by
  ``mmgpt.runtime.OnnxVLM`` from the same image file, eos disabled so every answer runs N tokens;
* ``smolvlm``: Hugging Face transformers' SmolVLM-256M architecture (``Idefics3ForConditionalGeneration``:
  SigLIP 512 px, patch 16, pixel shuffle x4 to 64 image tokens, SmolLM2-135M), built from a config with random
  weights (nothing downloaded), one 512 px image per prompt (no image splitting), answered with ``generate``.

Each object has ``answer(texts, images, batch_size=, max_new_tokens=)`` and ``record(callback)``, which makes
every decoding step call ``callback()`` once its logits exist (the per-step clock).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList

# HuggingFaceTB/SmolVLM-256M-Instruct's architecture: SigLIP-B/16 at 512 px and SmolLM2-135M
SMOLVLM_VISION = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                  "image_size": 512, "patch_size": 16}
SMOLVLM_TEXT = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49280,
                "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0,
                "tie_word_embeddings": False}
SMOLVLM_SCALE_FACTOR = 4
SMOLVLM_IMAGE_TOKEN = 49190
SMOLVLM_PROMPT_TOKENS = 12  # about as many as mmgpt's prompt of the same question


class OnnxPath:
    """An exported folder in mmgpt.runtime, eos disabled; `record` hooks its decoder steps."""

    def __init__(self, folder: Path, threads: int) -> None:
        from mmgpt.runtime import OnnxVLM

        self.vlm = OnnxVLM(folder, threads=threads)
        self.vlm.generation["eos_token_id"] = []  # every answer runs max_new_tokens steps
        self.folder = folder

    def answer(self, texts: Sequence[str], images: Sequence[Any], batch_size: int, max_new_tokens: int) -> Any:
        """OnnxVLM.answer."""
        return self.vlm.answer(list(texts), list(images), batch_size=batch_size, max_new_tokens=max_new_tokens)

    def record(self, callback: Callable[[], Any] | None) -> None:
        """Call `callback` after each decoder step (None: stop)."""
        if callback is None:
            self.vlm.__dict__.pop("decode_step", None)
            return
        step = type(self.vlm).decode_step.__get__(self.vlm)

        def recorded(*args: Any) -> Any:
            out = step(*args)
            callback()
            return out

        self.vlm.decode_step = recorded

    def decode_bytes(self) -> int:
        """Bytes of the decoder graph's weights: what one step reads (its token embeddings are another graph)."""
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(str(self.folder / "decoder.onnx")).graph
        return sum(numpy_helper.to_array(t).nbytes for t in graph.initializer if np.prod(t.dims) > 1024)


class _Callback(LogitsProcessor):
    def __init__(self, callback: Callable[[], Any]) -> None:
        self.callback = callback

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.callback()
        return scores


class SmolVLMPath:
    """transformers' SmolVLM-256M architecture with random weights, answering from image files."""

    def __init__(self, seed: int = 0) -> None:
        from transformers import Idefics3Config, Idefics3ForConditionalGeneration

        config = Idefics3Config(vision_config=SMOLVLM_VISION, text_config=SMOLVLM_TEXT,
                                scale_factor=SMOLVLM_SCALE_FACTOR, image_token_id=SMOLVLM_IMAGE_TOKEN,
                                tie_word_embeddings=False)
        torch.manual_seed(seed)
        self.model = Idefics3ForConditionalGeneration(config).eval()
        size = SMOLVLM_VISION["image_size"] // SMOLVLM_VISION["patch_size"]
        self.image_tokens = size * size // SMOLVLM_SCALE_FACTOR**2
        self.processors: LogitsProcessorList | None = None

    def num_parameters(self) -> int:
        """Parameters, tied ones once."""
        return self.model.num_parameters()

    def pixels(self, image: Any) -> torch.Tensor:
        """An image file -> (3, 512, 512) normalised as SigLIP's processor does (mean = std = 0.5)."""
        size = SMOLVLM_VISION["image_size"]
        picture = Image.open(image).convert("RGB").resize((size, size), Image.BICUBIC)
        return torch.from_numpy((np.asarray(picture, dtype=np.float32) / 255 - 0.5) / 0.5).permute(2, 0, 1)

    def answer(self, texts: Sequence[str], images: Sequence[Any], batch_size: int, max_new_tokens: int) -> Any:
        """Greedy generate of max_new_tokens after 64 image tokens and a fixed-length prompt."""
        pixel_values = torch.stack([self.pixels(image) for image in images])[:, None]  # (B, 1 image, 3, H, W)
        prompt = torch.arange(SMOLVLM_PROMPT_TOKENS) + 1000
        row = torch.cat([torch.full((self.image_tokens,), SMOLVLM_IMAGE_TOKEN), prompt])
        input_ids = row.expand(len(texts), -1).contiguous()
        return self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                   pixel_values=pixel_values, max_new_tokens=max_new_tokens,
                                   min_new_tokens=max_new_tokens, do_sample=False, logits_processor=self.processors)

    def record(self, callback: Callable[[], Any] | None) -> None:
        """Call `callback` at each step's logits (None: stop)."""
        self.processors = None if callback is None else LogitsProcessorList([_Callback(callback)])

    def decode_bytes(self) -> int:
        """The text model's weights but its input embedding lookup (the tied output layer read once)."""
        seen, total = set(), 0
        embedding = self.model.get_input_embeddings().weight
        tied = embedding.data_ptr() == self.model.lm_head.weight.data_ptr()
        for name, tensor in self.model.named_parameters(remove_duplicate=False):
            if "vision" in name or "connector" in name or tensor.data_ptr() in seen:
                continue
            if tensor.data_ptr() == embedding.data_ptr() and not tied:
                continue
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
        return total
