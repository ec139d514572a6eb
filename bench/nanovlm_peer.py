"""Peer comparison: nanoVLM's training throughput at mmgpt's ~200M size, batch and precision.

Needs a local checkout of https://github.com/huggingface/nanoVLM (``--nanovlm PATH``); nothing of it
is copied into this repository. nanoVLM is built from its own classes (``VisionLanguageModel`` from
``VLMConfig``, ``load_backbone=False``: random init, no weight download) at the size of mmgpt's
``gpu200m`` config: a ViT-B/16 at 224 px (768 wide, 12 blocks, 12 heads) and a SmolLM2-135M-shaped
decoder (576 wide, 30 blocks, 9 heads, 3 KV heads, MLP 1536, vocabulary 49152, tied embeddings),
with pixel-shuffle factor 2 (196 patches -> 49 image tokens), the original 222M nanoVLM layout.

The step is nanoVLM train.py's: bf16 autocast, ``model(input_ids, images, attention_mask, targets)``,
``loss.backward()``, gradient clipping at 1.0, its AdamW param groups (projector lr 0.00512,
backbones 5e-5; torch's default AdamW, as nanoVLM uses), ``optimizer.step()``, ``zero_grad()``.
The batches hold the same prompt and answer tokens as mmgpt's benchmark (same tokenizer, same
easy-VQA-like text), preceded by the 49 image tokens nanoVLM inserts, left-padded, with labels on the
answer tokens only; images are random tensors.

nanoVLM's tokenizer is only used in the forward pass for ``image_token_id``, so by default
``data.processors.get_tokenizer`` is replaced with a stub that provides it; this avoids a hub download
of HuggingFaceTB/SmolLM2-360M-Instruct and nanoVLM's data-pipeline dependencies (einops,
torchvision). ``--real-tokenizer`` uses nanoVLM's own instead and fails with what is missing.

nanoVLM's decoder hands SDPA a padding mask together with ``is_causal=True``. CUDA's memory-efficient
kernel accepts that; torch's math kernel (CPU, and GPUs without a fused bf16 kernel) rejects it
("Explicit attn_mask should not be set when is_causal=True", nanoVLM issue #90), so there the run
stops with that explanation unless ``--drop-padding-mask`` is given: the padding mask is then not
passed (same FLOPs; padded positions are attended, the loss still covers only the answer tokens).

By default the same measurement is then taken for mmgpt's gpu200m config in the same process
(``--mmgpt-fusion``), and the samples/s ratio mmgpt / nanoVLM is reported.

    python -m bench.nanovlm_peer --nanovlm /path/to/nanoVLM              # GPU, full size
    python -m bench.nanovlm_peer --nanovlm /path/to/nanoVLM --tiny       # both shrunk, runs on CPU
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
import types
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench import cli, common, train_throughput, workloads

logger = logging.getLogger("bench.nanovlm_peer")

NAME = "nanovlm_peer"

FULL = {
    "vit_hidden_dim": 768, "vit_inter_dim": 3072, "vit_patch_size": 16, "vit_img_size": 224, "vit_n_heads": 12,
    "vit_n_blocks": 12, "vit_cls_flag": False, "vit_dropout": 0.0,
    "lm_hidden_dim": 576, "lm_inter_dim": 1536, "lm_n_heads": 9, "lm_n_kv_heads": 3, "lm_n_blocks": 30,
    "lm_base_vocab_size": 49152, "extra_token_amount": 0, "lm_vocab_size": 49152, "lm_re_base": 100000,
    "lm_max_position_embeddings": 2048, "lm_max_length": 512, "lm_tie_weights": True, "lm_dropout": 0.0,
    "mp_pixel_shuffle_factor": 2, "mp_image_token_length": 49, "vlm_load_backbone_weights": False,
}
TINY = {
    **FULL,
    "vit_hidden_dim": 64, "vit_inter_dim": 256, "vit_patch_size": 8, "vit_img_size": 32, "vit_n_heads": 2,
    "vit_n_blocks": 2,
    "lm_hidden_dim": 64, "lm_inter_dim": 128, "lm_n_heads": 4, "lm_n_kv_heads": 2, "lm_n_blocks": 2,
    "lm_base_vocab_size": 1024, "lm_vocab_size": 1024, "lm_max_position_embeddings": 256, "lm_max_length": 256,
    "mp_image_token_length": 4,
}
# nanoVLM train.py's learning rates
LR = {"MP": 0.00512, "vision_encoder": 5e-5, "decoder": 5e-5}


class NanoVLMUnavailable(SystemExit):
    """nanoVLM cannot be imported or built here; the message says what is missing."""


def _stub_tokenizer_module(image_token_id: int) -> types.ModuleType:
    """A stand-in for nanoVLM's data.processors whose get_tokenizer returns only what the model uses."""
    module = types.ModuleType("data.processors")

    def get_tokenizer(name: str, extra_special_tokens: Any = None, chat_template: Any = None) -> Any:
        return types.SimpleNamespace(image_token_id=image_token_id, pad_token_id=0, eos_token_id=2,
                                     name_or_path=f"stub for {name}")

    module.get_tokenizer = get_tokenizer  # type: ignore[attr-defined]
    return module


@contextlib.contextmanager
def nanovlm_imports(path: Path, real_tokenizer: bool, image_token_id: int) -> Any:
    """Import nanoVLM's VisionLanguageModel and VLMConfig from `path`; sys.path/modules restored afterwards."""
    if not (path / "models" / "vision_language_model.py").is_file():
        raise NanoVLMUnavailable(
            f"--nanovlm {path}: not a nanoVLM checkout (no models/vision_language_model.py); "
            "get one with: git clone https://github.com/huggingface/nanoVLM")
    names = ("models", "data")
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in names}
    for key in saved:
        del sys.modules[key]
    sys.path.insert(0, str(path))
    try:
        if not real_tokenizer:
            package = types.ModuleType("data")
            package.__path__ = []  # type: ignore[attr-defined]
            sys.modules["data"] = package
            sys.modules["data.processors"] = _stub_tokenizer_module(image_token_id)
        try:
            from models.config import VLMConfig
            from models.vision_language_model import VisionLanguageModel
        except ModuleNotFoundError as e:
            raise NanoVLMUnavailable(
                f"nanoVLM at {path} needs the Python package '{e.name}', which is not installed here "
                f"(pip install {e.name}); without --real-tokenizer only torch and safetensors are needed") from e
        yield VLMConfig, VisionLanguageModel
    finally:
        sys.path.remove(str(path))
        for key in [k for k in sys.modules if k.split(".")[0] in names]:
            del sys.modules[key]
        sys.modules.update(saved)


def make_config(vlm_config_cls: type, tiny: bool) -> Any:
    """VLMConfig at the benchmark size; fields this nanoVLM version lacks are skipped with a warning."""
    wanted = TINY if tiny else FULL
    fields = {f.name for f in dataclasses.fields(vlm_config_cls)}
    missing = sorted(set(wanted) - fields)
    if missing:
        logger.warning("this nanoVLM's VLMConfig has no %s; left at its defaults", ", ".join(missing))
    return vlm_config_cls(**{k: v for k, v in wanted.items() if k in fields})


def text_batches(batch_size: int, num_batches: int, seed: int = 0) -> tuple[list[dict[str, torch.Tensor]], Any]:
    """Prompt and answer token ids exactly as mmgpt's benchmark makes them (same tokenizer and text)."""
    from mmgpt.config import TokenizerConfig
    from mmgpt.processor import Processor
    from mmgpt.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(workloads.tokenizer_texts(), TokenizerConfig(vocab_size=512))
    processor = Processor(tokenizer, None, max_prompt_length=32, max_answer_length=32)
    pairs = workloads.easy_vqa_like(batch_size * num_batches, seed=seed)
    batches = []
    for i in range(num_batches):
        chunk = pairs[i * batch_size : (i + 1) * batch_size]
        batches.append({"prompts": [processor.prompt_ids(q) for q, _ in chunk],
                        "answers": [processor.answer_ids(a) for _, a in chunk]})
    return batches, processor


def nanovlm_batch(texts: dict[str, list[list[int]]], image_tokens: int, image_token_id: int, image_size: int,
                  device: torch.device, seed: int) -> dict[str, Any]:
    """[image tokens | prompt | answer] left-padded as nanoVLM's collator does; labels on the answer tokens."""
    sequences, label_rows = [], []
    for prompt, answer in zip(texts["prompts"], texts["answers"]):
        ids = [image_token_id] * image_tokens + prompt + answer
        # labels[t] is the target of position t (nanoVLM rolls the loss mask left by one)
        supervised = [False] * (image_tokens + len(prompt)) + [False] + [True] * (len(answer) - 1)
        labels = [ids[t + 1] if t + 1 < len(ids) and supervised[t + 1] else -100 for t in range(len(ids))]
        sequences.append(ids)
        label_rows.append(labels)
    length = max(len(s) for s in sequences)
    input_ids = torch.zeros((len(sequences), length), dtype=torch.long)
    labels = torch.full((len(sequences), length), -100, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(sequences, label_rows)):
        input_ids[i, length - len(ids):] = torch.tensor(ids)
        labels[i, length - len(ids):] = torch.tensor(lab)
        mask[i, length - len(ids):] = 1
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(len(sequences), 3, image_size, image_size, generator=generator)
    return {"input_ids": input_ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device),
            "images": images.to(device)}


def nanovlm_flops(model: Any, cfg: Any, batch: dict[str, Any]) -> dict[str, float]:
    """Model FLOPs of one nanoVLM forward and training step, by bench.common's conventions."""
    vit, lm, mp = model.vision_encoder, model.decoder, model.MP
    images = int(batch["images"].shape[0])
    patches = (cfg.vit_img_size // cfg.vit_patch_size) ** 2 + (1 if cfg.vit_cls_flag else 0)
    vit_n = common.count_params(vit, common.lookup_parameter_ids(vit))
    vit_f = common.transformer_forward_flops(vit_n, cfg.vit_n_blocks, cfg.vit_hidden_dim, [patches] * images)
    mp_f = 2.0 * common.count_params(mp) * cfg.mp_image_token_length * images
    seq_lens = batch["attention_mask"].sum(dim=1).tolist()
    head = lm.head.weight
    body = common.count_params(lm, common.lookup_parameter_ids(lm) | {id(head)})
    lm_f = common.transformer_forward_flops(body, cfg.lm_n_blocks, cfg.lm_hidden_dim, seq_lens)
    # nanoVLM applies the LM head to every position of the padded batch
    lm_f += 2.0 * head.numel() * batch["input_ids"].numel()
    forward = vit_f + mp_f + lm_f
    return {"forward_flops": forward, "train_flops": 3 * forward,
            "parts": {"vision_encoder": 3 * vit_f, "modality_projector": 3 * mp_f, "decoder": 3 * lm_f}}


def measure_nanovlm(path: Path, tiny: bool = False, batch_size: int = 64, steps: int = 10, warmup: int = 3,
                    device: torch.device | None = None, precision: str = "bf16", compile: bool = False,
                    real_tokenizer: bool = False, count_flops: bool = True, profile: bool = False,
                    drop_padding_mask: bool = False, seed: int = 0) -> dict[str, Any]:
    """nanoVLM training steps at the benchmark size; the same figures as bench.train_throughput.measure."""
    device = device or common.resolve_device("auto")
    texts, _ = text_batches(batch_size, num_batches=4, seed=seed)
    vocab = (TINY if tiny else FULL)["lm_vocab_size"]
    stub_image_token = vocab - 1  # never produced by the 512-token text tokenizer
    with nanovlm_imports(path, real_tokenizer, stub_image_token) as (VLMConfig, VisionLanguageModel):
        cfg = make_config(VLMConfig, tiny)
        torch.manual_seed(seed)
        try:
            model = VisionLanguageModel(cfg, load_backbone=False)
        except OSError as e:
            raise NanoVLMUnavailable(
                f"nanoVLM's tokenizer {cfg.lm_tokenizer!r} could not be loaded ({e}); it needs the Hugging Face "
                "hub or a local cache of it. Run without --real-tokenizer to use the stub") from e
        image_token_id = model.tokenizer.image_token_id
        if image_token_id >= cfg.lm_vocab_size:
            raise NanoVLMUnavailable(f"image token id {image_token_id} is outside the vocabulary ({cfg.lm_vocab_size})")
        image_tokens = cfg.mp_image_token_length
        model.to(device)
        params = sum(p.numel() for p in model.parameters())
        logger.info("nanoVLM%s: %.1fM parameters, batch %d, precision %s, device %s", " (tiny)" if tiny else "",
                    params / 1e6, batch_size, precision, device)
        common.reset_peak_memory(device)
        groups = [{"params": list(getattr(model, name).parameters()), "lr": lr} for name, lr in LR.items()]
        optimizer = torch.optim.AdamW(groups)
        all_params = [p for g in optimizer.param_groups for p in g["params"]]
        forward = torch.compile(model) if compile else model
        batches = [nanovlm_batch(t, image_tokens, image_token_id, cfg.vit_img_size, device, seed + i)
                   for i, t in enumerate(texts)]
        model.train()
        flops = nanovlm_flops(model, cfg, batches[0])
        autocast = (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)) if precision == "bf16" \
            else contextlib.nullcontext

        def make(fwd: Any) -> Any:
            def step(batch: dict[str, Any]) -> torch.Tensor:
                mask = None if drop_padding_mask else batch["attention_mask"]
                with autocast():
                    try:
                        _, loss = fwd(batch["input_ids"], batch["images"], attention_mask=mask,
                                      targets=batch["labels"])
                    except RuntimeError as e:
                        if "is_causal" not in str(e):
                            raise
                        raise NanoVLMUnavailable(
                            f"nanoVLM's decoder passes a padding mask together with is_causal=True to "
                            f"scaled_dot_product_attention, which torch rejects on {device} ({e}; nanoVLM issue "
                            f"#90). It runs where CUDA's memory-efficient kernel is used; elsewhere pass "
                            f"--drop-padding-mask to time it without the padding mask") from e
                loss.backward()
                torch.nn.utils.clip_grad_norm_(all_params, max_norm=1.0)
                optimizer.step()
                optimizer.zero_grad()
                return loss.detach()
            return step

        step, eager_step = make(forward), make(model)
        counted = common.counted_flops(lambda: eager_step(batches[0])) if count_flops else None
        run = common.run_steps(step, batches, device, warmup, steps, profile=profile)
        vlm_cfg = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {}
    step_s = run.timing.median_s
    text_tokens = sum(len(p) + len(a) for t in texts for p, a in zip(t["prompts"], t["answers"])) / len(texts)
    lm_tokens = sum(int(b["attention_mask"].sum()) for b in batches) / len(batches)
    supervised = sum(int((b["labels"] != -100).sum()) for b in batches) / len(batches)
    flops_per_s = flops["train_flops"] / step_s
    return {
        "config": "nanovlm-tiny" if tiny else "nanovlm-222m",
        "nanovlm_path": str(path),
        "nanovlm_commit": common.git_commit(path, unknown=None),
        "tokenizer": "nanoVLM get_tokenizer" if real_tokenizer else "stub (image_token_id only)",
        "padding_mask": not drop_padding_mask,
        "batch_size": batch_size,
        "precision": precision,
        "compile": compile,
        "image_size": [cfg.vit_img_size, cfg.vit_img_size],
        "image_tokens": image_tokens,
        "params_total": params,
        "params_by_part": {n: sum(p.numel() for p in getattr(model, n).parameters()) for n in LR},
        **run.figures(batch_size),
        # prompt + answer tokens, the same count as mmgpt's tokens_per_s; lm_tokens adds the image tokens
        "tokens_per_s": text_tokens / step_s,
        "lm_tokens_per_s": lm_tokens / step_s,
        "supervised_tokens_per_s": supervised / step_s,
        "peak_memory_bytes": run.peak_memory_bytes,
        "peak_memory_kind": common.peak_memory_kind(device),
        "flops_per_step": flops["train_flops"],
        "flops_per_step_by_part": flops["parts"],
        "flops_per_step_counted": counted,
        "achieved_tflops": flops_per_s / 1e12,
        "mfu": common.mfu(flops_per_s, device),
        "compile_warmup_s": run.warmup_s if compile else None,
        "mean_loss": float(torch.stack(run.losses).float().mean()),
        "vlm_config": {k: v for k, v in vlm_cfg.items() if k != "vlm_extra_tokens"},
        "profile": run.profile,
    }


TABLE = [
    ("framework", "framework", ""),
    ("config", "config", ""),
    ("batch_size", "batch", "d"),
    ("precision", "prec", ""),
    ("params_m", "params (M)", ".1f"),
    ("step_ms", "step (ms)", ".1f"),
    ("samples_per_s", "samples/s", ".2f"),
    ("tokens_per_s", "text tok/s", ".0f"),
    ("peak_mem", "peak mem", ""),
    ("mfu_pct", "MFU %", ".1f"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of this benchmark."""
    parser = cli.new_parser(__doc__)
    parser.add_argument("--nanovlm", required=True, help="path to a local checkout of huggingface/nanoVLM")
    parser.add_argument("--tiny", action="store_true", help="shrink nanoVLM (and mmgpt's gpu200m) to run on a CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default 64 (8 with --tiny), as gpu200m")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=None, help="default 3 (10 with --compile)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--precision", choices=("bf16", "no"), default="bf16")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--real-tokenizer", action="store_true",
                        help="use nanoVLM's own get_tokenizer (needs einops, torchvision and the hub or its cache)")
    parser.add_argument("--drop-padding-mask", action="store_true",
                        help="do not pass nanoVLM its padding mask (needed where torch rejects mask + is_causal)")
    parser.add_argument("--mmgpt-fusion", default="cross_attention",
                        help=f"fusion of the mmgpt run to compare with ({', '.join(workloads.FUSIONS)}), or 'none'")
    parser.add_argument("--no-count-flops", action="store_true")
    parser.add_argument("--profile", action="store_true")
    cli.add_run_options(parser)
    args = parser.parse_args(argv)
    if args.mmgpt_fusion not in ("none", *workloads.FUSIONS):
        parser.error(f"--mmgpt-fusion must be one of {', '.join(workloads.FUSIONS)} or none")
    return args


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure nanoVLM (and mmgpt alongside), print the table, write the JSON; returns it."""
    args = parse_args(argv)
    device = cli.setup(args)
    batch_size = args.batch_size or (8 if args.tiny else 64)
    warmup = cli.warmup_steps(args)
    peer = measure_nanovlm(Path(args.nanovlm).expanduser().resolve(), tiny=args.tiny, batch_size=batch_size,
                           steps=args.steps, warmup=warmup, device=device, precision=args.precision,
                           compile=args.compile, real_tokenizer=args.real_tokenizer,
                           count_flops=not args.no_count_flops, profile=args.profile,
                           drop_padding_mask=args.drop_padding_mask, seed=args.seed)
    runs = [{"framework": "nanoVLM", **peer}]
    mine = None
    if args.mmgpt_fusion != "none":
        mine = train_throughput.measure("gpu200m", fusion=args.mmgpt_fusion, tiny=args.tiny, batch_size=batch_size,
                                        steps=args.steps, warmup=warmup, device=device, precision=args.precision,
                                        compile=args.compile, profile=args.profile,
                                        count_flops=not args.no_count_flops, seed=args.seed)
        runs.append({"framework": "mmgpt", **mine})
    common.print_table(f"training throughput, nanoVLM vs mmgpt, on {common.device_name(device)}",
                       train_throughput.table_rows(runs), TABLE)
    ratio = mine["samples_per_s"] / peer["samples_per_s"] if mine else None
    if ratio is not None:
        print(f"mmgpt ({args.mmgpt_fusion}) / nanoVLM samples/s: {ratio:.2f}x")
    name = NAME + ("-tiny" if args.tiny else "")
    return cli.write(NAME, name, device, args, {"nanovlm": peer, "mmgpt": mine,
                                                "samples_per_s_ratio_mmgpt_over_nanovlm": ratio})


main = common.exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
