"""README.md of a saved model: a Hugging Face model card (YAML metadata + text), so the folder can be pushed as is."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from mmgpt.config import ModelConfig

CARD_NAME = "README.md"


def base_models(config: ModelConfig) -> list[str]:
    """The pretrained parts a model starts from: hub names (local folders and from-scratch parts are left out)."""
    names = [config.generator.name]
    if config.text_encoder.type == "hf":
        names.append(config.text_encoder.name)
    if config.image_encoder.type == "hf" or config.image_encoder.pretrained:
        names.append(config.image_encoder.name)
    # a saved part's folder or a local checkpoint is no hub reference
    return [n for n in names if n and not Path(n).expanduser().exists() and "/" in n and not n.startswith((".", "/"))]


def _summary(config: ModelConfig, model: Any) -> list[str]:
    """Markdown table rows: each part, what it is and its parameters."""
    rows = ["| part | what | parameters |", "|---|---|---|"]
    parts = {
        "image_encoder": f"{config.image_encoder.type} `{config.image_encoder.name or 'from kwargs'}`",
        "text_encoder": f"{config.text_encoder.type} `{config.text_encoder.name or '-'}`",
        "fusion": f"{config.fusion.type}, dim {config.fusion.dim}, {config.fusion.num_layers} layer(s)",
        "projector": config.projector.type,
        "generator": f"`{config.generator.name or config.generator.kwargs.get('model_type', '?')}`",
    }
    for part, what in parts.items():
        count = sum(p.numel() for p in getattr(model, part).parameters())
        lora = getattr(getattr(config, part), "lora", None)
        if lora is not None and lora.r:
            what += f" + LoRA r={lora.r}"
        rows.append(f"| {part} | {what} | {count / 1e6:.2f}M |")
    return rows


def card_datasets(folder: Path) -> list[str]:
    """The datasets a saved folder's model card names (none without a card)."""
    path = folder / CARD_NAME
    if not path.is_file():
        return []
    return list(ModelCard.load(path).data.to_dict().get("datasets") or [])


def _compression_lines(record: dict) -> list[str]:
    """Markdown: how a compressed model was made from its source, and that the source's figures do not apply."""
    layers = len(record.get("layers") or [])
    if record.get("method") == "int8" and record.get("library") == "torch":
        how = (f"int8: int8 weights (one scale per output row) and dynamic int8 activations in {layers} layers, "
               "the token embedding and its tied output layer included (PyTorch's x86 kernels; runs on the CPU)")
    elif record.get("method") in ("int8", "int8-torchao"):
        how = (f"int8: int8 weights and dynamic int8 activations in {layers} linear layers "
               f"({record.get('library', 'torchao')}); the tied output embedding stays fp32")
    elif record.get("method") == "bf16":
        how = "bf16: every weight in bfloat16"
    else:
        how = str(record.get("method"))
    return [
        "## Compression",
        "",
        f"Compressed with `mmgpt` from `{record.get('source', '?')}` ({record.get('date', '?')}): {how}.",
        "The fp32 source's evaluation figures do not apply to this folder and are left out; evaluate it itself",
        "(`mmgpt eval-vqa --model path/to/this/folder`). `config.json` records the method under `compression`.",
        "",
    ]


def write_model_card(folder: Path, config: ModelConfig, model: Any, metrics: dict | None = None,
                     datasets: list[str] | None = None, compression: dict | None = None) -> None:
    """Write README.md into `folder` (inside a save's temp folder, so it is swapped in with the weights).

    `compression`: config.json's record of how the model was compressed (mmgpt quantize), said in the card.
    """
    finite = {k: round(float(v), 6) for k, v in (metrics or {}).items()
              if isinstance(v, (int, float)) and v == v and abs(v) != float("inf")}
    tags = ["mmgpt", "vision-language"] + ([str(compression.get("method"))] if compression else [])
    data = ModelCardData(library_name="mmgpt", pipeline_tag="image-text-to-text", tags=tags,
                         base_model=base_models(config) or None, datasets=list(datasets or []) or None,
                         metrics=sorted({k.rsplit("/", 1)[-1] for k in finite}) or None)
    if finite:
        data.mmgpt_eval = finite
    lines = [
        "# mmgpt vision-language model" + (f" ({compression.get('method')})" if compression else ""),
        "",
        "A vision-language model built with mmgpt: image encoder -> fusion -> projector -> causal generator.",
        "",
        *_summary(config, model),
        "",
        f"{model.num_parameters() / 1e6:.2f}M parameters in all.",
        "",
    ]
    if compression:
        lines += _compression_lines(compression)
    if finite:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" for k, v in finite.items()] + [""]
    lines += [
        "## Use",
        "",
        "```python",
        "from mmgpt import answer",
        "",
        'print(answer("What is in the image?", "image.png", model="path/to/this/folder"))',
        "# or from the hub: model=\"hf://org/name\"",
        "```",
        "",
        "or `mmgpt answer --model path/to/this/folder ...` (`mmgpt answer --help`). The folder holds",
        "`config.json` (the whole model config), `model.safetensors`, the tokenizer and the image transform.",
        "",
    ]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    card.save(folder / CARD_NAME)
