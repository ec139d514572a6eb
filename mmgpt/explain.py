"""Explain an answer: for each answer token, a map over the image of what it drew on.

    mmgpt explain --model M --image IMG [--image IMG2 ...] "question" [--out DIR]

The method follows the fusion (mmgpt.fusion):
* attention-based fusions (cross_attention, gated_cross_attention, film's pooling): the fusion's text -> image
  attention weights, mean over heads; each answer token weighs the text positions by the generator's attention
  from that token to them (mean over heads and generator layers), so the map is a mixture of the text tokens'
  image distributions. The map is the mean over fusion layers, and each layer's map is kept too.
* concat: the generator's attention from the answer token to the image positions of its prefix (mean over
  heads and layers; each layer kept).
* pooled fusions (weighted_sum, product, mlb, mfb, mutan, block): Grad-CAM on the image encoder's last feature
  grid I (B, Li, D): ReLU(sum_c w_c I[:, c]) with w_c the mean gradient of the token's log-probability.
Every map is non-negative and sums to 1 over the grid (a null-token column of the attention is left out).
Several images or tiles: one map per image and tile, a token's maps summing to 1 over all of them.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import logging
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmgpt.fusion.base import ImageLayout
from mmgpt.images import ImageInput, load_image, tile_views
from mmgpt.inference import load_model, question_batch
from mmgpt.model import MMGPT
from mmgpt.outputs import add_overwrite_arg, check_output_folder, writing_output_folder
from mmgpt.processor import image_set_inputs

logger = logging.getLogger("mmgpt.explain")

ATTENTION_FUSIONS = ("cross_attention", "gated_cross_attention", "film")
GENERATOR_ATTENTION_FUSIONS = ("concat",)


@dataclass
class Explanation:
    """An answer with, per answer token, a (rows, cols) map over the image grid that sums to 1 (per view, with
    several images or tiles)."""

    question: str
    answer: str
    tokens: list[str]
    method: str
    maps: torch.Tensor  # (N tokens, rows, cols)
    image: Any  # the PIL image the maps lie over
    layer_maps: torch.Tensor | None = None  # (N tokens, layers, rows, cols), where the method has layers
    token_ids: list[int] = field(default_factory=list)
    # several images or tiles: (label, picture) of each view, maps (N, views, rows, cols) and layer_maps
    # (N, layers, views, rows, cols), a token's maps summing to 1 over all views; image is the list of images
    views: list[tuple[str, Any]] = field(default_factory=list)


def method_for(model: MMGPT) -> str:
    """'fusion attention', 'generator attention' or 'grad-cam', by the model's fusion type."""
    fusion = model.config.fusion.type
    if fusion in ATTENTION_FUSIONS:
        return "fusion attention"
    if fusion in GENERATOR_ATTENTION_FUSIONS:
        return "generator attention"
    return "grad-cam"


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Clamp to >= 0 and scale each map (last axis) to sum 1; an all-zero map becomes uniform."""
    maps = maps.clamp(min=0).double()
    total = maps.sum(dim=-1, keepdim=True)
    uniform = torch.full_like(maps, 1.0 / maps.shape[-1])
    return torch.where(total > 0, maps / total.clamp(min=1e-30), uniform).float()


def grid_shape(length: int) -> tuple[int, int]:
    """(rows, cols) of Li image tokens: a square grid, else one row."""
    side = math.isqrt(length)
    return (side, side) if side * side == length else (1, length)


@contextmanager
def recorded_attention(modules: Sequence[nn.MultiheadAttention]) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward of `modules` also returns per-head weights, appended (B, H, Lq, Lk)."""
    weights: list[torch.Tensor] = []

    def ask(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def keep(module: nn.Module, args: tuple, kwargs: dict, output: tuple) -> None:
        weights.append(output[1].detach())

    handles = [h for m in modules for h in (m.register_forward_pre_hook(ask, with_kwargs=True),
                                            m.register_forward_hook(keep, with_kwargs=True))]
    try:
        yield weights
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def eager_attention(generator: nn.Module) -> Iterator[None]:
    """The generator with eager attention, which returns its weights (sdpa does not), restored afterwards."""
    before = generator.config._attn_implementation
    generator.set_attn_implementation("eager")
    try:
        yield
    finally:
        generator.set_attn_implementation(before)


def _answer_ids(model: MMGPT, batch: dict, max_new_tokens: int | None) -> list[int]:
    """Greedy answer token ids, without eos and padding."""
    options = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
    ids = model.generate_batch(batch, **options)[0].tolist()
    tokenizer = model.processor.tokenizer
    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    kept = []
    for token in ids:
        if token in stop:
            break
        kept.append(token)
    return kept


def _teacher_forced(model: MMGPT, batch: dict, answer: list[int], attentions: bool = True
                    ) -> tuple[torch.Tensor, int, Any]:
    """Run prefix + [bos] + answer through the generator -> (log-probs of the answer tokens (N,), prefix length,
    generator output with attentions)."""
    ids = torch.tensor([[model.processor.tokenizer.bos_token_id, *answer]], device=batch["input_ids"].device)
    # each view encoded on its own, so the image encoder's output has one row per view (Grad-CAM's grid)
    inputs = model.generator_inputs(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], ids,
                                    share_images=False, **image_set_inputs(batch))
    out = model.generator(inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask,
                          position_ids=inputs.position_ids, use_cache=False, output_attentions=attentions)
    start = inputs.prefix_mask.shape[1]
    logits = out.logits[0, start : start + len(answer)].float()
    log_probs = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    return log_probs, start, out


def _views(model: MMGPT, pictures: list[Any]) -> list[tuple[str, Any]]:
    """(label, picture) of every view the model encodes, in the order of its image tokens: per image the whole
    image, then with tiling its tiles row by row, each as the encoder sees it."""
    rows, cols = model.processor.tiling
    size = tuple(model.processor.image_transform.data_config["input_size"][1:])
    views = []
    for k, picture in enumerate(pictures):
        name = f"image {k + 1}" if len(pictures) > 1 else "image"
        pieces = tile_views(picture, size, rows, cols) if rows * cols else [picture]
        views.append((name, pieces[0]))
        views += [(f"{name} tile {divmod(t, cols)[0] + 1},{divmod(t, cols)[1] + 1}", tile)
                  for t, tile in enumerate(pieces[1:])]
    return views


def explain(
    model: str | Path | MMGPT | None, image: ImageInput | Sequence[ImageInput], question: str,
    max_new_tokens: int | None = None, answer: str | None = None,
) -> Explanation:
    """Answer `question` about `image` (greedy, or the given `answer`) and map every answer token over the image.

    Several images (a list) or a model with tiling: one map per image and tile (`Explanation.views`), all of a
    token's maps summing to 1 together.
    """
    model = load_model(model)
    model.eval()
    method = method_for(model)
    several = isinstance(image, (list, tuple)) or model.config.image_encoder.tiling.views > 1
    if several and method == "fusion attention" and not model.fusion.reads_all_images:
        raise ValueError(f"explain cannot map fusion '{model.config.fusion.type}' over several images or tiles: "
                         "it pools each one's attention on its own, so the generator's attention to the text does "
                         "not say which image a token drew on")
    pictures = [load_image(i) for i in image] if isinstance(image, (list, tuple)) else [load_image(image)]
    batch = question_batch(model, [question], [pictures] if several else pictures)
    if answer is None:
        answer_ids = _answer_ids(model, batch, max_new_tokens)
    else:
        answer_ids = model.processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
    layer_maps = None
    grid: list[torch.Tensor] = []  # keeps the image encoder output for Grad-CAM

    def keep_grid(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        # a leaf in place of the encoder output: its gradient is Grad-CAM's, and nothing flows into the encoder
        leaf = output.detach().requires_grad_()
        grid.append(leaf)
        return leaf

    attention_modules = [m for m in model.fusion.modules() if isinstance(m, nn.MultiheadAttention)]
    hook = model.image_encoder.register_forward_hook(keep_grid)
    try:
        with eager_attention(model.generator), recorded_attention(attention_modules) as fusion_weights, \
                torch.set_grad_enabled(method == "grad-cam"):
            log_probs, start, out = _teacher_forced(model, batch, answer_ids)
            views = grid[0].shape[0]
            # the fusion's tokens per view: pixel shuffle merges s x s encoder tokens into one
            tokens = grid[0].shape[1] // model.config.image_encoder.pixel_shuffle ** 2
            # rows of generator attention from the position that predicts each answer token
            generator = torch.stack([a[0].float().mean(dim=0) for a in out.attentions])
            generator = generator[:, start : start + len(answer_ids), :start]  # (layers, N, prefix)
            if method == "grad-cam":
                maps = _grad_cam(grid[0], log_probs)
                tokens = grid[0].shape[1]
            elif method == "generator attention":
                positions = _prefix_image_columns(model, batch, tokens, views, several)
                layer_maps = normalise(generator[..., positions]).transpose(0, 1)  # (N, layers, views * Li)
                maps = normalise(layer_maps.mean(dim=1))
            else:
                image_columns = (_prefix_image_columns(model, batch, tokens, views, several)
                                 if model.config.fusion.image_prefix else None)
                if image_columns is None:
                    layer_maps = _fusion_attention_maps(fusion_weights, generator, views * tokens)
                else:
                    # the generator reads the image through the text tokens and, with image_prefix, directly:
                    # the direct attention is one more map beside each fusion layer's
                    text_columns = torch.ones(generator.shape[-1], dtype=torch.bool)
                    text_columns[image_columns] = False
                    layer_maps = torch.cat([
                        _fusion_attention_maps(fusion_weights, generator[..., text_columns], views * tokens),
                        normalise(generator[..., image_columns].mean(dim=0)).unsqueeze(1)], dim=1)
                maps = normalise(layer_maps.mean(dim=1))
    finally:
        hook.remove()
    shape = grid_shape(tokens)
    grids = (views, *shape) if several else shape
    pieces = [model.processor.tokenizer.decode([t]) for t in answer_ids]
    return Explanation(
        question=question, answer=model.processor.tokenizer.decode(answer_ids, skip_special_tokens=True).strip(),
        tokens=pieces, method=method, maps=maps.reshape(len(answer_ids), *grids).detach().cpu(),
        image=pictures if several else pictures[0],
        layer_maps=None if layer_maps is None else layer_maps.reshape(*layer_maps.shape[:2], *grids).detach().cpu(),
        token_ids=answer_ids, views=_views(model, pictures) if several else [],
    )


def _grad_cam(features: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """(V, Li, D) image features of V views and (N,) token log-probs -> (N, V * Li) Grad-CAM maps."""
    maps = []
    for log_prob in log_probs:
        # autograd.grad, not backward: the model's own .grad fields stay untouched
        gradient = torch.autograd.grad(log_prob, features, retain_graph=True)[0]  # (V, Li, D)
        maps.append(torch.cat([torch.relu(features[v].detach() @ gradient[v].mean(dim=0))
                               for v in range(len(features))]))
    return normalise(torch.stack(maps)) if maps else torch.zeros(0, features.shape[0] * features.shape[1])


def _prefix_image_columns(model: MMGPT, batch: dict, tokens: int, views: int, several: bool) -> torch.Tensor:
    """Where the image tokens sit in the generator's prefix, for a fusion that keeps them there (concat,
    image_prefix): one image's first, several at their slots."""
    if not several:
        return torch.arange(tokens)
    return model.fusion.image_token_positions(batch["attention_mask"], ImageLayout(
        batch["image_mask"], batch["image_slots"], tokens, views))[0]


def _fusion_attention_maps(weights: list[torch.Tensor], generator: torch.Tensor, image_tokens: int) -> torch.Tensor:
    """Fusion weights [(1, H, Lt, Li(+null))] per layer and generator attention (layers, N, prefix) ->
    (N, fusion layers, Li): each text token's image distribution weighed by the answer token's attention to it."""
    # the prefix of these fusions is the text, left-padded: a batch of one has no padding
    text_weights = normalise(generator.mean(dim=0))  # (N, Lt)
    maps = []
    for layer in weights:
        per_text = normalise(layer[0].float().mean(dim=0)[:, :image_tokens])  # (Lt, Li): null column left out
        maps.append(normalise(text_weights @ per_text))
    return torch.stack(maps, dim=1)


# ----------------------------------------------------------------------------- output


def token_png(explanation: Explanation, index: int) -> bytes:
    """A PNG of token `index`'s map upsampled over the image, then each layer's map when there are layers; with
    several images or tiles, one panel per image and tile."""
    try:
        import matplotlib
    except ImportError as e:
        raise OSError("the maps are drawn with matplotlib, which is not installed: pip install 'mmgpt[plot]'") from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if explanation.views:
        # one panel per image and tile, each map over the view it was drawn from
        panels = [(label, view, heat) for (label, view), heat in zip(explanation.views, explanation.maps[index])]
    else:
        panels = [("mean over layers" if explanation.layer_maps is not None else explanation.method,
                   explanation.image, explanation.maps[index])]
        if explanation.layer_maps is not None and explanation.layer_maps.shape[1] > 1:
            panels += [(f"layer {i}", explanation.image, m) for i, m in enumerate(explanation.layer_maps[index])]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), squeeze=False)
    for ax, (title, image, heat) in zip(axes[0], panels):
        picture = np.asarray(image.convert("RGB"))
        ax.imshow(picture)
        # the grid stretched over the whole picture: each cell lies on the patch of the image it encodes
        ax.imshow(heat.numpy(), cmap="jet", alpha=0.5, extent=(0, picture.shape[1], picture.shape[0], 0),
                  interpolation="bilinear")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{explanation.tokens[index]!r} ({explanation.method})", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def image_png(image: Any) -> bytes:
    """The image itself as PNG bytes."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def explanation_html(explanation: Explanation, sources: Sequence[str] | None = None) -> str:
    """An HTML fragment: image, question, answer and one map per token (embedded, or at `sources`)."""
    if sources is None:
        sources = [_data_uri(token_png(explanation, i)) for i in range(len(explanation.tokens))]
    maps = "".join(f"<figure><img src='{html.escape(s)}' alt='map for {html.escape(t)}'>"
                   f"<figcaption>{html.escape(t)}</figcaption></figure>" for s, t in zip(sources, explanation.tokens))
    # an empty question asks for a caption: no empty "Q:" line
    asked = (f"<b>Q:</b> {html.escape(explanation.question)}<br><b>A:</b>" if explanation.question.strip()
             else "<b>Caption:</b>")
    images = explanation.image if isinstance(explanation.image, list) else [explanation.image]
    shown = "".join(f"<img style='width:192px;image-rendering:pixelated' src='{_data_uri(image_png(image))}' "
                    f"alt='image'>" for image in images)
    return (f"<div class='explanation'>{shown}<p>{asked} "
            f"{html.escape(explanation.answer)} <i>({html.escape(explanation.method)})</i></p>"
            f"<div style='display:flex;flex-wrap:wrap;gap:8px'>{maps}</div></div>")


STYLE = "body{font-family:sans-serif;margin:2em}figure{margin:0}"


def token_file_part(token: str) -> str:
    """A token as part of a file name: its letters and digits, else its characters' code points ("." -> u002e)."""
    return (re.sub(r"[^A-Za-z0-9]+", "_", token).strip("_") or "_".join(f"u{ord(c):04x}" for c in token)
            or "empty")


def save_explanation(explanation: Explanation, out: str | Path, overwrite: bool = False) -> list[Path]:
    """Write the folder `out`: token_NN_<token>.png per answer token and index.html; returns the written paths.

    The folder is written whole and swapped in (mmgpt.outputs): an earlier explanation there is replaced only
    with `overwrite`, and a file or another non-empty folder never.
    """
    out = Path(out)
    names = []
    with writing_output_folder(out, "explain", overwrite=overwrite) as tmp:
        for i, token in enumerate(explanation.tokens):
            names.append(f"token_{i:02d}_{token_file_part(token)}.png")
            (tmp / names[-1]).write_bytes(token_png(explanation, i))
        title = explanation.question.strip() or "caption"
        page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                f"<style>{STYLE}</style></head><body><h1>Explanation</h1>"
                f"{explanation_html(explanation, names)}</body></html>")
        (tmp / "index.html").write_text(page, encoding="utf-8")
    return [out / name for name in [*names, "index.html"]]


def faithfulness(model: MMGPT, examples: Sequence[Any]) -> dict[str, float]:
    """Mean |change| of the answer's log-probability when the most- vs the least-mapped grid cell is masked.

    Each example's greedy answer is explained, its map summed over tokens; masking sets that cell's pixels
    to 0 (the image transform's mean colour). A faithful map gives most > least.
    """
    most, least = [], []
    for example in examples:
        if isinstance(example.image, (list, tuple)) or model.config.image_encoder.tiling.views > 1:
            raise ValueError("faithfulness masks cells of one image seen whole: it takes one-image examples and a "
                             "model without model.image_encoder.tiling")
        explanation = explain(model, example.image, example.meta.get("question", example.prompt))
        if not explanation.token_ids:
            continue
        total = explanation.maps.sum(dim=0)
        base = _answer_log_prob(model, example, explanation, None)
        most.append(abs(base - _answer_log_prob(model, example, explanation, int(total.argmax()))))
        least.append(abs(base - _answer_log_prob(model, example, explanation, int(total.argmin()))))
    return {"most": sum(most) / max(len(most), 1), "least": sum(least) / max(len(least), 1),
            "examples": len(most)}


@torch.no_grad()
def _answer_log_prob(model: MMGPT, example: Any, explanation: Explanation, cell: int | None) -> float:
    batch = question_batch(model, [explanation.question], [explanation.image])
    if cell is not None:
        rows, cols = explanation.maps.shape[1:]
        height, width = batch["pixel_values"].shape[-2:]
        r, c = divmod(cell, cols)
        top, bottom = r * height // rows, (r + 1) * height // rows
        left, right = c * width // cols, (c + 1) * width // cols
        batch["pixel_values"][..., top:bottom, left:right] = 0.0
    return float(_teacher_forced(model, batch, explanation.token_ids, attentions=False)[0].sum())


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The explain command: print the answer and where the maps were written."""
    from mmgpt.logging_setup import configure_logging

    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("question", help="the question about the image")
    parser.add_argument("--image", required=True, action="append",
                        help="the image file; repeat it for a question about several images (one map each)")
    parser.add_argument("--model", default=None,
                        help="model folder, or hf://org/name for a hub model (default: $MMGPT_MODEL or the main job's)")
    parser.add_argument("--out", default="explain",
                        help="folder to write token_NN.png and index.html to (default: explain); new or empty, "
                             "unless --overwrite")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="longest answer (default: the model's)")
    add_overwrite_arg(parser, "explain", option="--out")
    args = parser.parse_args(argv)
    configure_logging(logging.WARNING)
    check_output_folder(args.out, "explain", overwrite=args.overwrite)  # before the model is loaded
    images = args.image[0] if len(args.image) == 1 else args.image
    explanation = explain(args.model, images, args.question, args.max_new_tokens)
    written = save_explanation(explanation, args.out, overwrite=args.overwrite)
    print(explanation.answer)
    print(f"{explanation.method} maps: {len(written) - 1} PNG(s) and {written[-1]}")
    return 0
