"""Train an mmgpt model: `accelerate launch train.py [--config FILE] [--resume latest | --overwrite] [key=value ...]`.

With no arguments it trains configs/default.yaml: a tiny model from scratch on the built-in
easy-VQA and synthetic captioning data, on whatever accelerate provides (one CPU up to many GPUs).
A fresh run refuses an output_dir that already holds a run: continue it with --resume latest, pick
another output_dir, or start over with --overwrite. Only a completed run of configs/default.yaml (the
README's main job) becomes the model answer() uses by default.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mmgpt.config import apply_overrides, from_dict, load_yaml, to_dict
from mmgpt.data.dataset import GroupedBatches, RobustImages, check_images, make_collate
from mmgpt.data.formats import PromptTemplates, read_dataset
from mmgpt.data.mixture import Mixture
from mmgpt.evaluate import generate_answers, mean_loss, one_per_image, score
from mmgpt.logging_setup import configure_logging
from mmgpt.model import MMGPT
from mmgpt.tokenizer import train_tokenizer
from mmgpt.train_config import TrainConfig
from mmgpt.checkpoints import (
    STATE_NAME,
    check_output_dir,
    checkpoint_dirs,
    clear_run,
    new_run_id,
    resolve_resume,
    save_checkpoint,
)
from mmgpt.saving import write_json
from mmgpt.training import (
    NonFiniteTraining,
    StopRequest,
    apply_freezing,
    build_optimizer,
    build_scheduler,
    cpu_processes,
    nonfinite_parameters,
    plot_losses,
    set_cpu_threads,
    set_train_mode,
)

logger = logging.getLogger("mmgpt.train")
# keys that change neither the trained model nor its data: a run that differs from configs/default.yaml
# only in these is still the README's main job
NEUTRAL_KEYS = ("cpu_threads", "log_every", "stop_at_step", "save_every", "keep_checkpoints", "data.num_workers")


def default_config_path() -> Path:
    """configs/default.yaml, installed as the package data of mmgpt.configs."""
    from importlib import resources

    return Path(str(resources.files("mmgpt.configs") / "default.yaml"))


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """Command line -> (validated TrainConfig, parsed arguments)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(default_config_path()), help="YAML config (default: configs/default.yaml)")
    parser.add_argument(
        "--resume",
        default=None,
        help="continue a run exactly: 'latest' (newest checkpoint in output_dir), 'auto' (latest if any), or a path",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an output_dir that holds an earlier run: delete its checkpoints, model and logs first",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.lr=1e-3 model.fusion.name=product")
    args = parser.parse_args(argv)
    if args.overwrite and args.resume:
        parser.error("--overwrite starts over and --resume continues: pass one of them")
    data = apply_overrides(load_yaml(args.config), args.overrides, defaults=to_dict(TrainConfig()))
    return from_dict(TrainConfig, data), args


def is_default_job(cfg: TrainConfig) -> bool:
    """Whether `cfg` is the README's main job: configs/default.yaml, changed at most in NEUTRAL_KEYS."""
    default = from_dict(TrainConfig, apply_overrides(load_yaml(default_config_path()), [],
                                                     defaults=to_dict(TrainConfig())))

    def essentials(config: TrainConfig) -> dict:
        data = to_dict(config)
        for key in NEUTRAL_KEYS:
            *sections, name = key.split(".")
            node = data
            for section in sections:
                node = node[section]
            node.pop(name)
        data["output_dir"] = str(Path(data["output_dir"]).resolve())
        return data

    return essentials(cfg) == essentials(default)


def read_splits(specs: list, templates: PromptTemplates) -> list[tuple[str, list]]:
    """Read every dataset spec -> [(name, examples)]."""
    return [(spec.label, read_dataset(spec, templates)) for spec in specs]


def build_model(cfg: TrainConfig, train_sets: list, accelerator: Accelerator, resume_dir: Path | None) -> MMGPT:
    """Build the model; a from-scratch tokenizer is trained once (main process) and shared through disk."""
    if cfg.model.generator.name:
        return MMGPT.from_config(cfg.model)
    tokenizer_dir = Path(cfg.output_dir) / "tokenizer"
    if accelerator.is_main_process and not (resume_dir and tokenizer_dir.is_dir()):
        texts = [t for _, examples in train_sets for e in examples for t in (e.prompt, e.answer)]
        train_tokenizer(texts, cfg.model.tokenizer).save_pretrained(tokenizer_dir)
    accelerator.wait_for_everyone()
    from transformers import AutoTokenizer

    return MMGPT.from_config(cfg.model, tokenizer=AutoTokenizer.from_pretrained(tokenizer_dir))


def evaluate(model: MMGPT, eval_sets: list, accelerator: Accelerator, max_examples: int) -> dict[str, float]:
    """Loss and task metrics on each held-out set (the first `max_examples` of each; 0 = all)."""
    metrics: dict[str, float] = {}
    for name, examples in eval_sets:
        subset = examples[:max_examples] if max_examples else examples
        metrics[f"{name}/loss"] = mean_loss(model, subset, accelerator=accelerator)
        generation_set = one_per_image(subset)
        predictions = generate_answers(model, generation_set, batch_size=256, accelerator=accelerator)
        metrics.update({f"{name}/{k}": v for k, v in score(generation_set, predictions).items()})
    return metrics


def main(argv: list[str] | None = None) -> dict:
    """Train, checkpoint, evaluate and save the final model; returns the final metrics."""
    cfg, args = parse_args(argv)
    output_dir = Path(cfg.output_dir)
    trackers = "tensorboard" if _has_tensorboard() else None
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with=trackers, project_dir=str(output_dir),
                              cpu=cpu_processes(), step_scheduler_with_optimizer=False,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))  # max_steps counts global steps
    configure_logging(logging.INFO if accelerator.is_main_process else logging.WARNING)
    set_seed(cfg.seed)
    if accelerator.device.type == "cpu":
        logger.info("%d CPU thread(s) per process", set_cpu_threads(cfg.cpu_threads))
    resume_dir = resolve_resume(args.resume, output_dir) if args.resume else None
    # every rank checks before any rank writes, so all of them agree
    check_output_dir(output_dir, resuming=resume_dir is not None, overwrite=args.overwrite)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and args.overwrite:
        for path in clear_run(output_dir):
            logger.info("--overwrite: deleted %s", path)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    logger.info("run folder %s, %d process(es), device %s", output_dir, accelerator.num_processes, accelerator.device)
    if accelerator.num_processes == 1 and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ:
        logger.warning("`accelerate launch --cpu --num_processes N` starts one process; for N CPU processes use "
                       "`accelerate launch --multi_gpu --num_processes N train.py` (CPU DDP when there is no GPU)")

    templates = PromptTemplates(vqa=cfg.model.vqa_template, caption=cfg.model.caption_prompt)
    train_sets = read_splits(cfg.data.train, templates)
    eval_sets = read_splits(cfg.data.eval, templates)
    model = build_model(cfg, train_sets, accelerator, resume_dir)
    processor = model.processor
    frozen = apply_freezing(model)
    logger.info("model: %.2fM parameters (%.2fM trainable)", model.num_parameters() / 1e6,
                model.num_parameters(trainable_only=True) / 1e6)

    # each distinct image is checked (and, small data, decoded) once; every rank does the same
    progress = accelerator.is_main_process
    checked = []
    for (name, examples), spec in zip(train_sets, cfg.data.train):
        kept, report = check_images(examples, processor.image_tensor, cfg.data.cache_images,
                                    cfg.data.max_bad_fraction, progress=progress, name=name) \
            if cfg.data.check_images else (examples, None)
        checked.append((name, kept, spec.weight, report))
    eval_sets = [(name, check_images(ex, processor.image_tensor, cfg.data.cache_images, 1.0,
                                     progress=progress, name=name)[0]) for name, ex in eval_sets]
    mixture = Mixture([(n, ex, w) for n, ex, w, _ in checked], num_samples=cfg.data.samples_per_epoch or None,
                      seed=cfg.seed)
    dataset = RobustImages(mixture, processor.image_tensor, seed=cfg.seed,
                           augment={spec.label: spec.augment for spec in cfg.data.train})
    # batches are formed at the global size and split across processes, so N processes see exactly
    # the batches one process would
    batch_sampler = GroupedBatches(mixture, cfg.batch_size * accelerator.num_processes, seed=cfg.seed,
                                   questions_per_image=cfg.data.questions_per_image)
    loader = DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=make_collate(processor),
                        num_workers=cfg.data.num_workers, pin_memory=torch.cuda.is_available(),
                        persistent_workers=False)

    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        # batch-norm statistics over the global batch, as one process would compute them
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.gradient_checkpointing:
        model.generator.gradient_checkpointing_enable()
    optimizer = build_optimizer(model, cfg.optim, fused=True if torch.cuda.is_available() else None)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.max_steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    raw_model: MMGPT = accelerator.unwrap_model(model)
    forward = torch.compile(model) if cfg.compile else model
    if trackers:
        accelerator.init_trackers("mmgpt", config=_flat_scalars(to_dict(cfg)))

    # only the main process writes checkpoints, so only its run id is ever recorded
    state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "history": {"train": [], "eval": []},
             "bad_images_runtime": 0, "run_id": new_run_id(), "default_job": is_default_job(cfg),
             "nonfinite_steps": 0}
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        resumed = json.loads((resume_dir / STATE_NAME).read_text())
        # checkpoints from before run ids have none: the resumed run stays id-less, and rotates them along
        resumed.setdefault("run_id", None)
        # a run that was the main job only in part (other settings before the resume) is not the main job
        resumed["default_job"] = resumed.get("default_job", False) and state["default_job"]
        state = {**state, **resumed}
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", resume_dir, state["step"],
                    state["epoch"], state["batches_in_epoch"])

    batches_per_epoch = len(loader)
    if batches_per_epoch < cfg.grad_accum_steps:
        raise ValueError(f"an epoch has {batches_per_epoch} batches, fewer than grad_accum_steps={cfg.grad_accum_steps}")

    def stream():
        """(epoch, batches consumed in epoch, batch) forever, resuming mid-epoch exactly."""
        epoch, skip = state["epoch"], state["batches_in_epoch"]
        while True:
            iterator = accelerator.skip_first_batches(loader, skip) if skip else loader
            # accelerate's loaders set the dataset's epoch from their own iteration count, which a
            # resumed run's fresh loader would restart at 0
            if hasattr(iterator, "set_epoch"):
                iterator.set_epoch(epoch)
            batch_sampler.set_epoch(epoch)
            for position, batch in enumerate(iterator, start=skip + 1):
                yield epoch, position, batch
            epoch, skip = epoch + 1, 0

    batches = stream()
    global_batch = cfg.batch_size * accelerator.num_processes * cfg.grad_accum_steps
    bar = tqdm(total=cfg.max_steps, initial=state["step"], disable=not accelerator.is_main_process, desc="training")
    window_loss = torch.zeros((), device=accelerator.device, dtype=torch.float64)
    window_tokens = torch.zeros((), device=accelerator.device, dtype=torch.float64)
    window_start, window_steps = time.perf_counter(), 0
    set_train_mode(raw_model, frozen)
    # the bar closes on an error too, so the error message starts on a line of its own
    with StopRequest() as stop, bar:
        while state["step"] < cfg.max_steps:
            micro = []
            for _ in range(cfg.grad_accum_steps):
                epoch, position, batch = next(batches)
                state["bad_images_runtime"] += int(batch.pop("bad_images"))
                micro.append(batch)
            state["epoch"], state["batches_in_epoch"] = (epoch, position) if position < batches_per_epoch else (epoch + 1, 0)
            # normalise by the supervised tokens of the whole global batch, so N processes x B
            # examples give the same gradient as 1 process x N*B examples
            tokens = sum(b["answer_mask"][:, 1:].sum() for b in micro).to(torch.float32)
            global_tokens = accelerator.reduce(tokens, reduction="sum").clamp(min=1.0)
            step_loss = torch.zeros((), device=accelerator.device, dtype=torch.float64)
            step_tokens = torch.zeros((), device=accelerator.device, dtype=torch.float64)
            for i, batch in enumerate(micro):
                sync = i == len(micro) - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                    out = forward(**batch)
                    accelerator.backward(out.loss_sum * accelerator.num_processes / global_tokens)
                step_loss += out.loss_sum.detach().double()
                step_tokens += out.num_tokens.double()
            # max_norm=inf only measures the norm (the scale factor is clamped to exactly 1)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(),
                                                    cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf)
            if _step_is_finite(accelerator, step_loss, grad_norm, cfg.mixed_precision):
                optimizer.step()
                window_loss += step_loss
                window_tokens += step_tokens
            else:
                _nonfinite_step(cfg, state, output_dir, step_loss / step_tokens.clamp(min=1), grad_norm)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state["step"] += 1
            window_steps += 1
            bar.update(1)

            step = state["step"]
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                totals = accelerator.reduce(torch.stack([window_loss, window_tokens]), reduction="sum")
                # no tokens: every step of the window was skipped as non-finite
                loss = float(totals[0] / totals[1]) if totals[1] > 0 else math.nan
                elapsed = time.perf_counter() - window_start
                samples_per_s = window_steps * global_batch / elapsed
                if math.isfinite(loss):
                    state["history"]["train"].append([step, loss])
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", samples_s=f"{samples_per_s:.0f}")
                accelerator.log({"train/loss": loss, "train/lr": scheduler.get_last_lr()[0],
                                 "train/samples_per_s": samples_per_s}, step=step)
                window_loss.zero_()
                window_tokens.zero_()
                window_start, window_steps = time.perf_counter(), 0
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                metrics = evaluate(raw_model, eval_sets, accelerator, cfg.data.eval_max_examples)
                set_train_mode(raw_model, frozen)
                eval_loss = sum(v for k, v in metrics.items() if k.endswith("/loss")) / max(len(eval_sets), 1)
                state["history"]["eval"].append([step, eval_loss])
                accelerator.log(metrics, step=step)
                logger.info("step %d eval: %s", step, _fmt(metrics))
            stop_now = step == cfg.stop_at_step or (step % cfg.log_every == 0 and _any_rank(accelerator, stop.requested))
            if (cfg.save_every and step % cfg.save_every == 0) or stop_now:
                _check_weights(raw_model, step, output_dir)
                save_checkpoint(accelerator, output_dir, step, state, cfg.keep_checkpoints)
            if stop_now:
                logger.warning("stopped at step %d; continue with --resume latest", step)
                bar.close()
                accelerator.end_training()
                return {"stopped_at_step": step}
    bar.close()
    _check_weights(raw_model, state["step"], output_dir)

    bad_runtime = int(accelerator.reduce(torch.tensor(state["bad_images_runtime"], device=accelerator.device),
                                         reduction="sum"))
    metrics = evaluate(raw_model, eval_sets, accelerator, max_examples=0)
    checked_summary = {name: (report.summary() if report else "not checked") for name, _, _, report in checked}
    result = {"step": state["step"], "metrics": metrics, "bad_images": checked_summary,
              "bad_images_during_training": bad_runtime, "nonfinite_steps_skipped": state["nonfinite_steps"]}
    if accelerator.is_main_process:
        raw_model.save_pretrained(output_dir / "model")
        write_json(output_dir / "metrics.json", result, indent=2)
        write_json(output_dir / "history.json", state["history"])
        plot_losses(state["history"], output_dir / "loss.png")
        logger.info("final eval: %s", _fmt(metrics))
        for name, summary in checked_summary.items():
            logger.info("bad images in %s: %s", name, summary)
        if bad_runtime:
            logger.warning("%d images failed to load during training and were replaced", bad_runtime)
        if state["nonfinite_steps"]:
            logger.warning("%d step(s) had a NaN/inf loss or gradient and were skipped", state["nonfinite_steps"])
        logger.info("model saved to %s", output_dir / "model")
        if state["default_job"]:
            _remember_model(output_dir / "model")
    accelerator.log(metrics, step=state["step"])
    accelerator.end_training()
    return result


def _step_is_finite(accelerator: Accelerator, loss: torch.Tensor, grad_norm: torch.Tensor | None,
                    mixed_precision: str) -> bool:
    """True on every rank when no rank saw a NaN/inf loss or gradient norm in this step."""
    bad = (~torch.isfinite(loss)).float()
    # under fp16 an infinite gradient is the loss scaler's business: it skips that update and lowers its scale
    if grad_norm is not None and mixed_precision != "fp16":
        bad = bad + (~torch.isfinite(torch.as_tensor(grad_norm, device=loss.device))).float()
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    return not bool(bad > 0)


def _nonfinite_step(cfg: TrainConfig, state: dict, output_dir: Path, loss: torch.Tensor,
                    grad_norm: torch.Tensor | None) -> None:
    """Count and skip a step with a NaN/inf loss or gradient (skip_nonfinite_steps), or stop the run naming it."""
    step = state["step"] + 1
    norm = "unknown" if grad_norm is None else f"{float(grad_norm):.4g}"
    if cfg.skip_nonfinite_steps:
        state["nonfinite_steps"] += 1
        logger.warning("step %d: loss %.4g, gradient norm %s: update skipped (skip_nonfinite_steps)",
                       step, float(loss), norm)
        return
    checkpoints = checkpoint_dirs(output_dir)
    kept = f"the last good checkpoint is {checkpoints[-1]}" if checkpoints else "no checkpoint was written yet"
    # a checkpoint restores the optimizer's learning rates, so a lower optim.lr only helps a fresh start
    raise NonFiniteTraining(
        f"step {step}: the loss is {float(loss):.4g} and the gradient norm {norm}, so training diverged; nothing "
        f"of this step was applied or saved, and {kept}. Start over (--overwrite) with a lower optim.lr or "
        "optim.lr_multipliers and optim.grad_clip > 0, or skip such steps with skip_nonfinite_steps=true "
        "(with --resume latest to continue from that checkpoint)"
    )


def _check_weights(model: MMGPT, step: int, output_dir: Path) -> None:
    """Refuse to save weights that hold NaN/inf (the last good checkpoint stays the newest)."""
    bad = nonfinite_parameters(model)
    if bad:
        checkpoints = checkpoint_dirs(output_dir)
        kept = f"the last good checkpoint is {checkpoints[-1]}" if checkpoints else "no checkpoint was written"
        raise NonFiniteTraining(
            f"step {step}: {len(bad)} weight tensor(s) hold NaN or inf ({', '.join(bad[:3])}), so they were not "
            f"saved; {kept}. Start over (--overwrite) with a lower optim.lr or optim.lr_multipliers"
        )


def _any_rank(accelerator: Accelerator, flag: bool) -> bool:
    """True on every rank when any rank saw the flag, so all stop at the same step."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor(float(flag), device=accelerator.device), reduction="sum") > 0)


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _flat_scalars(data: dict, prefix: str = "") -> dict:
    """Nested config -> {dotted key: scalar} for trackers that only take scalars."""
    flat = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat_scalars(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if math.isfinite(v))


def _remember_model(path: Path) -> None:
    """Record the newest trained model, so answer() finds it without arguments."""
    from mmgpt.inference import remember_default_model

    remember_default_model(path)


if __name__ == "__main__":
    main()
