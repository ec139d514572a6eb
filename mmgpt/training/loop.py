"""Train an mmgpt model:

    accelerate launch train.py [--config NAME|FILE] [--resume latest | --overwrite] [key=value ...]

With no arguments it trains configs/default.yaml: a tiny model from scratch on the built-in
easy-VQA and synthetic captioning data, on whatever accelerate provides (one CPU up to many GPUs).
A fresh run refuses an output_dir that already holds a run: continue it with --resume latest, pick
another output_dir, or start over with --overwrite. An output_dir that is a file, or a non-empty folder
mmgpt did not write as a run folder, is always refused (mmgpt.outputs). Only a completed run of
configs/default.yaml (the README's main job) becomes the model answer() uses by default.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DistributedType, gather_object, send_to_device, set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mmgpt import lora
from mmgpt.config import ConfigError, PromptTemplates, to_dict
from mmgpt.data.dataset import GroupedBatches, RobustImages, TooManyBadImages, check_images, make_collate
from mmgpt.data.example import blinded
from mmgpt.data.formats import read_dataset
from mmgpt.data.hf import is_stream
from mmgpt.data.mixture import Mixture
from mmgpt.data.pixel_cache import PixelCache
from mmgpt.data.streaming import BatchImages, StreamingMixture, first_examples
from mmgpt.devices import (
    SlowdownNotice,
    ThreadWatch,
    busy_cores_of_others,
    cpu_jiffies,
    cpu_processes,
    set_cpu_threads,
    threads_beside,
    warn_if_one_process_launched,
)
from mmgpt.eval.runner import generate_answers, mean_loss, one_per_image, score
from mmgpt.hf_models import load_hf_tokenizer
from mmgpt.logging_setup import configure_logging
from mmgpt.model import MMGPT
from mmgpt.outputs import write_marker
from mmgpt.saving import write_json
from mmgpt.tokenizer import cached_train_tokenizer
from mmgpt.training.checkpoint import (
    StopRequest,
    TrainState,
    check_output_dir,
    checkpoint_dirs,
    clear_run,
    resolve_resume,
    save_checkpoint,
)
from mmgpt.training.config import (
    TrainConfig,
    is_default_job,
    load_train_config,
    presets,
    resumed_config,
)
from mmgpt.training.distill import distill_loss_sum, load_teacher
from mmgpt.training.ema import WeightEMA
from mmgpt.training.fsdp import (
    broadcast_buffers,
    check_checkpoint,
    describe_units,
    full_copy,
    named_tensors,
    setup_fsdp,
)
from mmgpt.training.memory import cast_frozen, enable_gradient_checkpointing
from mmgpt.training.nonfinite import check_weights, skip_or_stop, step_is_finite
from mmgpt.training.optim import (
    apply_freezing,
    build_optimizer,
    build_scheduler,
    fused_adamw,
    set_train_mode,
)

logger = logging.getLogger("mmgpt.train")
_IMPORTED = time.perf_counter()


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """Command line -> (validated TrainConfig, parsed arguments); `prog` names the command in usage and errors."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="default",
                        help=f"a preset ({', '.join(presets())}) or a YAML file "
                             "(default: default, configs/default.yaml)")
    parser.add_argument(
        "--resume",
        default=None,
        help="continue a run exactly: 'latest' (newest checkpoint in output_dir), 'auto' (latest if any), or a path",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an output_dir that holds an earlier run: delete its checkpoints, model and logs first. "
             "Only a folder mmgpt wrote as a run folder is cleared; a file, or a non-empty folder that is not an mmgpt "
             "run folder, is refused and never touched, even with --overwrite",
    )
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (base: chain, overrides, a resumed run's own) as YAML and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="build the model on the meta device (no weights; a hub name's config.json is still "
                             "fetched), print parameters per part, trainable share and estimated memory, and exit")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. optim.lr=1e-3 model.fusion.type=product")
    # intermixed: overrides may come before or after the options (`train.py --overwrite max_steps=10`)
    args = parser.parse_intermixed_args(argv)
    if args.overwrite and args.resume:
        parser.error("--overwrite starts over and --resume continues: pass one of them")
    cfg = load_train_config(args.config, args.overrides)
    if args.resume:
        # --config and the overrides only locate the run; it continues with the settings it was started with
        checkpoint = resolve_resume(args.resume, cfg.output_dir)
        saved = _saved_config(checkpoint, Path(cfg.output_dir)) if checkpoint is not None else None
        if saved is not None:
            cfg = resumed_config(saved, args.overrides)
    return cfg, args


def _saved_config(checkpoint: Path, output_dir: Path) -> Path | None:
    """The config.yaml of the run that wrote `checkpoint` (in its run folder), or None for a run without one."""
    for folder in (checkpoint.parent.parent, output_dir):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    logger.warning("no config.yaml next to %s: resuming with the config given on the command line", checkpoint)
    return None


@dataclass
class Run:
    """Everything a training run builds before its first step, and the state it advances."""

    cfg: TrainConfig
    accelerator: Accelerator
    # as accelerate prepared it (DDP-wrapped on several processes, sharded in place under FSDP); `forward` is it
    # or its torch.compile
    model: nn.Module
    raw_model: MMGPT
    forward: Callable[..., Any]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: DataLoader
    # None when a training set is streamed: `stream` then forms this process's batches
    batch_sampler: GroupedBatches | None
    frozen: dict[str, bool]
    eval_sets: list[tuple[str, list]]
    # (name, kept examples, weight, bad-image report or None) per training set
    checked: list[tuple[str, list, float, Any]]
    state: TrainState
    # wall time spent in periodic evaluation, so a step time can leave it out (mmgpt.compare)
    eval_seconds: float = 0.0
    # distill.teacher's frozen model (mmgpt.training.distill), or None
    teacher: MMGPT | None = None
    # the moving average of the weights (optim.ema_decay > 0), or None
    ema: WeightEMA | None = None
    stream: StreamingMixture | None = None
    # the streamed data's position after the last batch trained on (saved with each checkpoint)
    stream_position: dict | None = None
    # under FSDP: the model as built, before sharding, into which evaluation and saving gather the weights
    template: MMGPT | None = None
    # (cpu_jiffies(), time.monotonic()) when the run started: how busy the machine's other processes kept
    # its cores during start-up picks the thread count (choose_cpu_threads)
    load_start: tuple | None = None

    def eval_model(self) -> MMGPT:
        """The model evaluation and saving use: the weights' moving average when there is one.

        Under FSDP a whole copy gathered on every rank: every rank calls this, once per evaluation or save.
        """
        if self.template is None:
            return self.ema.module if self.ema is not None else self.raw_model
        tensors = self.ema.named_tensors() if self.ema is not None else named_tensors(self.raw_model)
        return full_copy(self.template, tensors, self.accelerator.device)

    @property
    def output_dir(self) -> Path:
        """The run folder (cfg.output_dir)."""
        return Path(self.cfg.output_dir)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`mmgpt train` and train.py -> exit status 0 (bad input raises; mmgpt.cli reports it with status 2)."""
    run_training(argv, prog)
    return 0


def run_training(argv: list[str] | None = None, prog: str | None = None) -> dict:
    """Train, checkpoint, evaluate and save the final model (build_run -> train -> finish).

    Returns the final metrics ({"stopped_at_step": N} for a run stopped early; the report of --dry-run, the
    config of --print-config).
    """
    cfg, args = parse_args(argv, prog)
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return {"config": to_dict(cfg)}
    if args.dry_run:
        from mmgpt.dry_run import dry_run, format_report

        report = dry_run(cfg)
        print(format_report(report), end="")
        return report
    run = build_run(cfg, args)
    if not train(run):
        run.accelerator.end_training()
        return {"stopped_at_step": run.state.step}
    return finish(run)


# ----------------------------------------------------------------------------- build


def start_accelerator(cfg: TrainConfig) -> Accelerator:
    """The Accelerator, logging, seed and CPU threads of a run."""
    trackers = "tensorboard" if _has_tensorboard() else None
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with=trackers, project_dir=cfg.output_dir,
                              cpu=cpu_processes(), step_scheduler_with_optimizer=False,
                              # max_steps counts global steps
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    configure_logging(logging.INFO if accelerator.is_main_process else logging.WARNING)
    setup_fsdp(accelerator)
    set_seed(cfg.seed)
    if accelerator.device.type == "cpu":
        logger.info("%d CPU thread(s) per process", set_cpu_threads(cfg.cpu_threads))
    return accelerator


def prepare_output_dir(cfg: TrainConfig, args: argparse.Namespace, accelerator: Accelerator) -> Path | None:
    """Check (and with --overwrite clear) the run folder, write config.yaml; returns the checkpoint to resume."""
    output_dir = Path(cfg.output_dir)
    resume_dir = resolve_resume(args.resume, output_dir) if args.resume else None
    # every rank checks before any rank writes, so all of them agree
    check_output_dir(output_dir, resuming=resume_dir is not None, overwrite=args.overwrite)
    if resume_dir is not None:
        reached = _saved_step(resume_dir)
        if reached is not None and reached > cfg.max_steps:
            # before config.yaml is written: the run folder keeps describing the run it holds
            raise ConfigError(f"max_steps={cfg.max_steps} is below step {reached}, where {resume_dir} already is: "
                              f"resume with max_steps >= {reached}, or train a new run into another output_dir")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and args.overwrite:
        for path in clear_run(output_dir):
            logger.info("--overwrite: deleted %s", path)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_marker(output_dir, "run")
        (output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    logger.info("run folder %s, %d process(es), device %s", output_dir, accelerator.num_processes, accelerator.device)
    warn_if_one_process_launched(accelerator.num_processes, "train.py")
    return resume_dir


def _saved_step(checkpoint: Path) -> int | None:
    """The step a checkpoint's trainer_state.json records, or None where it cannot be read (loading says why)."""
    try:
        return TrainState.resume(checkpoint, default_job=False).step
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def load_checkpoint(accelerator: Accelerator, checkpoint: Path, default_job: bool) -> TrainState:
    """Load a checkpoint's weights, optimizer and data state into the prepared run -> its TrainState; a damaged
    checkpoint is a ValueError naming it and the earlier checkpoints to resume from instead."""
    try:
        accelerator.load_state(str(checkpoint))
        state = TrainState.resume(checkpoint, default_job=default_job)
    except Exception as e:  # torch, safetensors and pickle each raise their own kinds for a damaged file
        earlier = [p for p in checkpoint_dirs(checkpoint.parent.parent) if p != checkpoint]
        hint = f"; resume an earlier one: --resume {earlier[-1]}" if earlier else ""
        raise ValueError(f"checkpoint {checkpoint} cannot be loaded, it is damaged ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:300]}){hint}") from e
    return state


def check_examples(splits: list[tuple[str, Any]], max_images: int) -> None:
    """ConfigError naming the first example (set and id) with more images than model.max_images, before training;
    a warning for each set with examples whose answer is empty (they train the model to answer nothing)."""
    for name, examples in splits:
        if not isinstance(examples, list):
            continue  # a streamed set is checked as its batches are made
        empty = []
        for example in examples:
            count = len(example.image) if isinstance(example.image, (list, tuple)) else 1
            if count > max_images:
                raise ConfigError(f"dataset {name!r}: example {example.id!r} has {count} images, more than "
                                  f"model.max_images={max_images}; raise model.max_images or leave the example out")
            if isinstance(example.answer, str) and not example.answer.strip():
                empty.append(example.id)
        if empty:
            logger.warning("dataset %r: %d of %d examples have an empty answer (first: %r); they are kept and teach "
                           "the model to answer nothing (`mmgpt validate` lists them)", name, len(empty),
                           len(examples), empty[0])


def read_splits(specs: list, templates: PromptTemplates, blind: bool = False) -> list[tuple[str, list]]:
    """Read every dataset spec -> [(name, examples)]; `blind` (data.blind) gives every example one constant image."""
    return [(spec.label, blinded(examples) if blind else examples)
            for spec in specs for examples in [read_dataset(spec, templates)]]


def build_model(cfg: TrainConfig, train_sets: list, accelerator: Accelerator, resume_dir: Path | None) -> MMGPT:
    """Build the model (init_from: loaded from that folder); a from-scratch tokenizer is trained once and shared."""
    if cfg.init_from:
        model = MMGPT.from_pretrained(cfg.init_from)
        # the same model as the folder's (config_from_data checked it); freezing may differ
        model.config = copy.deepcopy(cfg.model)
        lora.add_adapters(model, cfg.model)
        return model
    if cfg.model.generator.name:
        return MMGPT.from_config(cfg.model)
    tokenizer_dir = Path(cfg.output_dir) / "tokenizer"
    if accelerator.is_main_process and not (resume_dir and tokenizer_dir.is_dir()):
        # a list is read whole; a lazy or streamed set gives its first TOKENIZER_SAMPLE examples
        texts = [t for _, examples in train_sets
                 for e in (examples if isinstance(examples, list) else first_examples(examples, TOKENIZER_SAMPLE))
                 for t in (e.prompt, e.answer)]
        # the same text trains the same tokenizer: a run on the data of an earlier one reads it from $MMGPT_CACHE
        cached_train_tokenizer(texts, cfg.model.tokenizer).save_pretrained(tokenizer_dir)
    accelerator.wait_for_everyone()
    return MMGPT.from_config(cfg.model, tokenizer=load_hf_tokenizer(tokenizer_dir))


# examples a from-scratch tokenizer is trained on from each lazy or streamed training set
TOKENIZER_SAMPLE = 20_000


def build_stream_loader(cfg: TrainConfig, checked: list, processor: Any,
                        accelerator: Accelerator) -> tuple[DataLoader, StreamingMixture]:
    """This process's batches of a mixture with a streamed set: read on the fly, from this process's shard.

    The mixture plans each batch in this process (rows read, images still bytes); data.num_workers workers
    decode and transform the images, and the loader hands the batches back in plan order, so the data and the
    position each batch carries are the same with any number of workers.
    """
    stream = StreamingMixture([(n, ex, w) for n, ex, w, _ in checked], cfg.batch_size, seed=cfg.seed,
                              rank=accelerator.process_index, world_size=accelerator.num_processes)
    images = BatchImages(processor.image_tensor, seed=cfg.seed,
                         augment={spec.label: spec.augment for spec in cfg.data.train})
    collate = make_collate(processor)

    def collate_with_state(element: tuple[list, dict]) -> dict:
        items, state = element
        # a failed image was replaced by another of its batch, not by an extra read (as make_collate counts)
        return {**collate(items), "images_read": torch.tensor(len(items)), "data_state": state}

    loader = DataLoader(images, sampler=stream, batch_size=None, collate_fn=collate_with_state,
                        num_workers=cfg.data.num_workers, pin_memory=torch.cuda.is_available())
    return loader, stream


def build_loader(cfg: TrainConfig, checked: list, processor: Any,
                 accelerator: Accelerator) -> tuple[DataLoader, GroupedBatches]:
    """The weighted mixture of the checked training sets as a DataLoader of global batches."""
    mixture = Mixture([(n, ex, w) for n, ex, w, _ in checked], num_samples=cfg.data.samples_per_epoch or None,
                      seed=cfg.seed)
    dataset = RobustImages(mixture, processor.image_tensor, seed=cfg.seed,
                           augment={spec.label: spec.augment for spec in cfg.data.train})
    # batches are formed at the global size and split across processes, so N processes see exactly
    # the batches one process would
    batch_sampler = GroupedBatches(mixture, cfg.batch_size * accelerator.num_processes, seed=cfg.seed,
                                   questions_per_image=cfg.data.questions_per_image,
                                   mixed=cfg.data.mixed_batches)
    loader = DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=make_collate(processor),
                        num_workers=cfg.data.num_workers, pin_memory=torch.cuda.is_available(),
                        persistent_workers=False)
    return loader, batch_sampler


def build_run(cfg: TrainConfig, args: argparse.Namespace) -> Run:
    """Accelerator, run folder, data, model, optimizer and schedule, and the state (fresh or resumed)."""
    # the ~0.5M objects of the imports (torch, transformers) outlive the run: with them out of the garbage
    # collector's passes, reading the datasets' annotations takes half the time (a caller's own freeze is kept)
    frozen_here = gc.get_freeze_count() == 0
    if frozen_here:
        gc.freeze()
    try:
        return _build_run(cfg, args)
    finally:
        if frozen_here:
            gc.unfreeze()


def _build_run(cfg: TrainConfig, args: argparse.Namespace) -> Run:
    accelerator = start_accelerator(cfg)
    load_start = (cpu_jiffies(), time.monotonic())  # other processes' load during start-up (threads)
    resume_dir = prepare_output_dir(cfg, args, accelerator)
    if resume_dir is not None:
        check_checkpoint(accelerator, resume_dir)

    templates = PromptTemplates.from_config(cfg.model)
    train_sets = read_splits(cfg.data.train, templates, cfg.data.blind)
    eval_sets = read_splits(cfg.data.eval, templates, cfg.data.blind)
    check_examples(train_sets + eval_sets, cfg.model.max_images)
    model = build_model(cfg, train_sets, accelerator, resume_dir)
    processor = model.processor
    frozen = apply_freezing(model)
    logger.info("model: %.2fM parameters (%.2fM trainable)", model.num_parameters() / 1e6,
                model.num_parameters(trainable_only=True) / 1e6)

    # each distinct image of a list is checked (and, small data, decoded) once; every rank does the same.
    # A lazy or streamed set is never read whole: its images are checked as training loads them
    progress = accelerator.is_main_process
    # the pixels of images an earlier run checked come from $MMGPT_CACHE/images
    pixel_cache = PixelCache.for_processor(processor) if cfg.data.cache_images else None
    checked = []
    for (name, examples), spec in zip(train_sets, cfg.data.train):
        kept, report = check_images(examples, processor.image_tensor, cfg.data.cache_images,
                                    cfg.data.max_bad_fraction, progress=progress, name=name,
                                    pixel_cache=pixel_cache) \
            if cfg.data.check_images and isinstance(examples, list) else (examples, None)
        checked.append((name, kept, spec.weight, report))
    eval_sets = [(name, check_images(first_examples(ex, 0 if isinstance(ex, list) else
                                                    spec.max_examples or cfg.data.eval_max_examples),
                                     processor.image_tensor, cfg.data.cache_images, 1.0, progress=progress,
                                     name=name, pixel_cache=pixel_cache)[0])
                 for (name, ex), spec in zip(eval_sets, cfg.data.eval)]
    stream = None
    if any(is_stream(examples) for _, examples, _, _ in checked):
        loader, stream = build_stream_loader(cfg, checked, processor, accelerator)
        batch_sampler = None
    else:
        loader, batch_sampler = build_loader(cfg, checked, processor, accelerator)

    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        # batch-norm statistics over the global batch, as one process would compute them
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.gradient_checkpointing:
        logger.info("gradient checkpointing in: %s", ", ".join(enable_gradient_checkpointing(model)) or "none")
    if image_autocast(cfg.image_encoder_autocast, accelerator.device):
        model.train_image_autocast = torch.bfloat16
        logger.info("image encoder trains under bf16 autocast (image_encoder_autocast: %s)",
                    cfg.image_encoder_autocast)
    if cast := cast_frozen(model, frozen, cfg.frozen_dtype):
        logger.info("frozen parts in bf16: %s", ", ".join(cast))
    optimizer = build_optimizer(model, cfg.optim, fused=fused_adamw(accelerator.device))
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.max_steps)
    # FSDP shards the model in place; evaluation and saving need its structure whole
    template = copy.deepcopy(model) if accelerator.distributed_type == DistributedType.FSDP else None
    if stream is None:
        model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    else:
        # each process reads its own shard, which accelerate's loader would instead read on one and dispatch
        model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if template is not None:
        logger.info("FSDP units: %s", describe_units(model))
    if _has_tensorboard():
        accelerator.init_trackers("mmgpt", config=_flat_scalars(to_dict(cfg)))

    state = TrainState(default_job=is_default_job(cfg))
    if resume_dir is not None:
        state = load_checkpoint(accelerator, resume_dir, state.default_job)
        logger.info("resumed from %s at step %d (epoch %d, batch %d)", resume_dir, state.step,
                    state.epoch, state.batches_in_epoch)
        if stream is not None:
            if not state.data_state:
                raise ValueError(f"{resume_dir} holds no position in the streamed data; start a new run")
            stream.load_state_dict(state.data_state[accelerator.process_index])
    if stream is None and len(loader) < cfg.grad_accum_steps:
        raise ValueError(f"an epoch has {len(loader)} batches, fewer than grad_accum_steps={cfg.grad_accum_steps}")
    raw_model = accelerator.unwrap_model(model)
    teacher = load_teacher(cfg.distill.teacher, raw_model, accelerator.device) if cfg.distill.teacher else None
    ema = None
    if cfg.optim.ema_decay > 0:
        # built after load_state, so a checkpoint without an average restarts it from the resumed weights
        ema = WeightEMA(raw_model, cfg.optim.ema_decay)
        if resume_dir is not None and not ema.load(resume_dir):
            logger.warning("%s holds no weight average: it restarts from the resumed weights", resume_dir)
    return Run(cfg=cfg, accelerator=accelerator, model=model, raw_model=raw_model,
               forward=torch.compile(model) if cfg.compile else model, optimizer=optimizer, scheduler=scheduler,
               loader=loader, batch_sampler=batch_sampler, frozen=frozen, eval_sets=eval_sets, checked=checked,
               state=state, teacher=teacher, ema=ema, stream=stream, template=template,
               load_start=load_start)


def image_autocast(setting: str, device: torch.device) -> bool:
    """Whether image_encoder_autocast ('no', 'bf16', 'auto') puts the image encoder's training under bf16."""
    if setting != "auto":
        return setting == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # without native bf16 (AVX512-BF16 or AMX) oneDNN emulates it, several times slower than float32
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


# ----------------------------------------------------------------------------- loop


def batch_stream(run: Run) -> Iterator[tuple[int, int, dict]]:
    """(epoch, batches consumed in epoch, batch) forever, resuming mid-epoch exactly."""
    epoch, skip = run.state.epoch, run.state.batches_in_epoch
    if run.stream is not None:  # endless, already positioned by load_state_dict; epoch stays 0
        for position, batch in enumerate(run.loader, start=skip + 1):
            yield epoch, position, send_to_device(batch, run.accelerator.device)
        return
    while True:
        iterator = run.accelerator.skip_first_batches(run.loader, skip) if skip else run.loader
        # accelerate's loaders set the dataset's epoch from their own iteration count, which a
        # resumed run's fresh loader would restart at 0
        if hasattr(iterator, "set_epoch"):
            iterator.set_epoch(epoch)
        run.batch_sampler.set_epoch(epoch)
        for position, batch in enumerate(iterator, start=skip + 1):
            yield epoch, position, batch
        epoch, skip = epoch + 1, 0


@dataclass
class LossWindow:
    """Loss and answer tokens summed since the last log line, with its start time and steps."""

    loss: torch.Tensor
    tokens: torch.Tensor
    start: float = field(default_factory=time.perf_counter)
    steps: int = 0

    @classmethod
    def on(cls, device: torch.device) -> LossWindow:
        """An empty window with float64 sums on `device`."""
        return cls(torch.zeros((), device=device, dtype=torch.float64),
                   torch.zeros((), device=device, dtype=torch.float64))

    def reset(self) -> None:
        """Start the next window."""
        self.loss.zero_()
        self.tokens.zero_()
        self.start, self.steps = time.perf_counter(), 0


def next_micro_batches(run: Run, batches: Iterator[tuple[int, int, dict]]) -> list[dict]:
    """The grad_accum_steps micro-batches of one optimizer step; advances the state's data position."""
    micro = []
    for _ in range(run.cfg.grad_accum_steps):
        epoch, position, batch = next(batches)
        run.state.bad_images_runtime += int(batch.pop("bad_images"))
        run.state.images_read_runtime += int(batch.pop("images_read"))
        if "data_state" in batch:
            run.stream_position = batch.pop("data_state")
        micro.append(batch)
    finished_epoch = run.stream is None and position >= len(run.loader)
    run.state.epoch, run.state.batches_in_epoch = (epoch + 1, 0) if finished_epoch else (epoch, position)
    return micro


def forward_backward(run: Run, micro: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Accumulate the gradients of one optimizer step -> (loss sum, answer tokens, gradient norm)."""
    accelerator = run.accelerator
    # normalise by the supervised tokens of the whole global batch, so N processes x B
    # examples give the same gradient as 1 process x N*B examples
    tokens = sum(b["answer_mask"][:, 1:].sum() for b in micro).to(torch.float32)
    global_tokens = accelerator.reduce(tokens, reduction="sum").clamp(min=1.0)
    step_loss = torch.zeros((), device=accelerator.device, dtype=torch.float64)
    step_tokens = torch.zeros((), device=accelerator.device, dtype=torch.float64)
    for i, batch in enumerate(micro):
        sync = i == len(micro) - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(run.model):
            # a teacher's distillation loss reads the logits, which a batch split by answer length does not keep
            out = run.forward(**batch, split_lengths=run.teacher is None)
            # with a teacher the objective is the distillation loss; the logged loss stays the answer CE
            loss_sum = out.loss_sum if run.teacher is None else distill_loss_sum(out, run.teacher, batch,
                                                                                 run.cfg.distill)
            accelerator.backward(loss_sum * accelerator.num_processes / global_tokens)
        step_loss += out.loss_sum.detach().double()
        step_tokens += out.num_tokens.double()
    # max_norm=inf only measures the norm (the scale factor is clamped to exactly 1)
    grad_clip = run.cfg.optim.grad_clip
    grad_norm = accelerator.clip_grad_norm_(run.model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    return step_loss, step_tokens, grad_norm


# images read before the running share of bad ones can stop a run (a few bad ones early are no trend)
MIN_IMAGES_FOR_BAD_FRACTION = 200


def check_bad_fraction(run: Run) -> None:
    """Stop with TooManyBadImages when the share of images that failed during training passes data.max_bad_fraction."""
    counts = torch.tensor([run.state.bad_images_runtime, run.state.images_read_runtime], dtype=torch.float64,
                          device=run.accelerator.device)
    bad, read = (float(c) for c in run.accelerator.reduce(counts, reduction="sum"))
    limit = run.cfg.data.max_bad_fraction
    if read >= MIN_IMAGES_FOR_BAD_FRACTION and bad / read > limit:
        raise TooManyBadImages(f"{bad:.0f} of {read:.0f} images read during training failed to load, more than "
                               f"data.max_bad_fraction={limit:g}; fix the data or raise the threshold")


def log_window(run: Run, window: LossWindow, bar: tqdm) -> None:
    """Record the mean training loss since the last log line (history, progress bar, trackers)."""
    accelerator, step = run.accelerator, run.state.step
    totals = accelerator.reduce(torch.stack([window.loss, window.tokens]), reduction="sum")
    # no tokens: every step of the window was skipped as non-finite
    loss = float(totals[0] / totals[1]) if totals[1] > 0 else math.nan
    global_batch = run.cfg.batch_size * accelerator.num_processes * run.cfg.grad_accum_steps
    samples_per_s = window.steps * global_batch / (time.perf_counter() - window.start)
    if math.isfinite(loss):
        run.state.history["train"].append([step, loss])
    lr = run.scheduler.get_last_lr()[0]
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{samples_per_s:.0f}")
    accelerator.log({"train/loss": loss, "train/lr": lr, "train/samples_per_s": samples_per_s}, step=step)
    window.reset()


def evaluate_during_training(run: Run) -> None:
    """Periodic evaluation on the first data.eval_max_examples of each eval set; back to train mode after."""
    start = time.perf_counter()
    metrics = evaluate(run.eval_model(), run.eval_sets, run.accelerator, run.cfg.data.eval_max_examples)
    run.eval_seconds += time.perf_counter() - start
    set_train_mode(run.raw_model, run.frozen)
    eval_loss = sum(v for k, v in metrics.items() if k.endswith("/loss")) / max(len(run.eval_sets), 1)
    run.state.history["eval"].append([run.state.step, eval_loss])
    run.accelerator.log(metrics, step=run.state.step)
    logger.info("step %d eval: %s", run.state.step, _fmt(metrics))


def train(run: Run) -> bool:
    """Optimizer steps up to max_steps with logging, evaluation and checkpoints; False when stopped early."""
    cfg, state, accelerator = run.cfg, run.state, run.accelerator
    batches = batch_stream(run)
    window = LossWindow.on(accelerator.device)
    if accelerator.is_main_process:  # a resumed run's unlogged steps, summed over processes: counted once
        window.loss += state.loss_window[0]
        window.tokens += state.loss_window[1]
        window.steps = int(state.loss_window[2])
    watch = choose_cpu_threads(run)
    # a fixed thread count on a CPU a neighbour shares: say why steps crawl, once
    notice = (SlowdownNotice(torch.get_num_threads()) if watch is None and accelerator.device.type == "cpu"
              and torch.get_num_threads() > 1 else None)
    if notice is not None and run.load_start is not None:
        notice.started_beside(busy_cores_of_others(run.load_start[0], time.monotonic() - run.load_start[1]))
    bar = tqdm(total=cfg.max_steps, initial=state.step, disable=not accelerator.is_main_process, desc="training")
    set_train_mode(run.raw_model, run.frozen)
    # the bar closes on an error too, so the error message starts on a line of its own
    first_step = state.step + 1
    with StopRequest() as stop, bar:
        while state.step < cfg.max_steps:
            step_start = time.perf_counter()
            micro = next_micro_batches(run, batches)
            step_loss, step_tokens, grad_norm = forward_backward(run, micro)
            if step_is_finite(accelerator, step_loss, grad_norm, cfg.mixed_precision):
                run.optimizer.step()
                if run.ema is not None:
                    run.ema.update(run.raw_model)
                window.loss += step_loss
                window.tokens += step_tokens
            else:
                skip_or_stop(cfg.skip_nonfinite_steps, state, run.output_dir,
                             step_loss / step_tokens.clamp(min=1), grad_norm)
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            window.steps += 1
            bar.update(1)
            seconds = time.perf_counter() - step_start
            if notice is not None:
                notice.step_done(seconds)
            if watch is not None:
                threads = watch.step_done(seconds)
                if threads is not None:
                    torch.set_num_threads(threads)
                    state.cpu_threads = threads

            step = state.step
            if step == first_step:
                took, since_start = seconds, seconds_since_start()
                logger.info("first step after %.1f s (start-up %.1f s, the step itself %.1f s)", since_start,
                            since_start - took, took)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                log_window(run, window, bar)
                check_bad_fraction(run)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps:
                evaluate_during_training(run)
            # every step, so a signal's checkpoint follows within one step (the launcher may already
            # have returned the prompt); a plain bool on one process, one all-reduce on several
            stop_now = _any_rank(accelerator, stop.requested) or step == cfg.stop_at_step
            # the last step is always kept: a run stopped during its final evaluation resumes there, not from scratch
            if (cfg.save_every and step % cfg.save_every == 0) or stop_now or step == cfg.max_steps:
                if run.template is not None:
                    broadcast_buffers(run.raw_model)
                check_weights(run.raw_model, step, run.output_dir)
                if run.stream is not None:
                    state.data_state = gather_object([run.stream_position])
                totals = accelerator.reduce(torch.stack([window.loss, window.tokens]), reduction="sum")
                state.loss_window = [float(totals[0]), float(totals[1]), window.steps]
                save_checkpoint(accelerator, run.output_dir, step, state.to_dict(), cfg.keep_checkpoints,
                                write_extra=run.ema.save if run.ema is not None else None)
            if stop_now:
                logger.warning("stopped at step %d; continue with --resume latest", step)
                return False
    return True


def choose_cpu_threads(run: Run) -> ThreadWatch | None:
    """With follow_cpu_load, set a one-process CPU run's threads for the load met at start-up -> its ThreadWatch.

    A resumed run continues with the count its checkpoint recorded. A thread count can change how a CPU rounds
    (it does on the AMD EPYC measured), so a run that met a busy neighbour rounds differently from a quiet one.
    None (nothing changes during the run) without follow_cpu_load, for GPU, several processes, one core or a
    set cpu_threads.
    """
    cfg, state = run.cfg, run.state
    full = torch.get_num_threads()
    if (not cfg.follow_cpu_load or run.accelerator.device.type != "cpu" or cfg.cpu_threads != 0
            or run.accelerator.num_processes != 1 or full < 2):
        return None
    if state.cpu_threads:
        threads = min(state.cpu_threads, full)
    else:
        start, started = run.load_start or (None, 0.0)
        others = busy_cores_of_others(start, time.monotonic() - started)
        threads = threads_beside(full, others)
        if threads != full:
            logger.info("other processes kept %.1f cores busy during start-up: training with %d CPU thread(s) "
                        "(cpu_threads sets a count)", others, threads)
    state.cpu_threads = threads
    torch.set_num_threads(threads)
    return ThreadWatch(threads, full)


# ----------------------------------------------------------------------------- finish


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


def finish(run: Run) -> dict:
    """Final evaluation on every example; the main process saves the model, metrics, history and loss curve."""
    accelerator, state, output_dir = run.accelerator, run.state, run.output_dir
    model = run.eval_model()
    check_weights(model, state.step, output_dir)
    bad_runtime = int(accelerator.reduce(torch.tensor(state.bad_images_runtime, device=accelerator.device),
                                         reduction="sum"))
    metrics = evaluate(model, run.eval_sets, accelerator, max_examples=0)
    checked_summary = {name: (report.summary() if report else "not checked") for name, _, _, report in run.checked}
    result = {"step": state.step, "metrics": metrics, "bad_images": checked_summary,
              "bad_images_during_training": bad_runtime, "nonfinite_steps_skipped": state.nonfinite_steps}
    if accelerator.is_main_process:
        # the model card records the final evaluation and the training sets
        model.save_pretrained(output_dir / "model", metrics=metrics,
                              datasets=[spec.label for spec in run.cfg.data.train])
        write_json(output_dir / "metrics.json", result, indent=2)
        write_json(output_dir / "history.json", state.history)
        plot_losses(state.history, output_dir / "loss.png")
        logger.info("final eval: %s", _fmt(metrics))
        for name, summary in checked_summary.items():
            logger.info("bad images in %s: %s", name, summary)
        if bad_runtime:
            logger.warning("%d images failed to load during training and were replaced", bad_runtime)
        if state.nonfinite_steps:
            logger.warning("%d step(s) had a NaN/inf loss or gradient and were skipped", state.nonfinite_steps)
        logger.info("model saved to %s", output_dir / "model")
        if state.default_job:
            from mmgpt.inference import remember_default_model

            # the newest trained model of the main job, so answer() finds it without arguments
            remember_default_model(output_dir / "model")
    accelerator.log(metrics, step=state.step)
    # as in the eval scripts: no rank tears gloo down while another may still be using it
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def plot_losses(history: dict[str, list], path: str | Path) -> bool:
    """Write the training (and eval) loss curves as a PNG; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib not installed: no loss-curve PNG (pip install 'mmgpt[plot]')")
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    if history.get("train"):
        steps, losses = zip(*history["train"])
        ax.plot(steps, losses, label="train loss")
    if history.get("eval"):
        steps, losses = zip(*history["eval"])
        ax.plot(steps, losses, "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / answer token)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def seconds_since_start() -> float:
    """Wall time since this process started (since this module was imported where that is unknown)."""
    try:
        import psutil
    except ImportError:
        return time.perf_counter() - _IMPORTED
    try:
        return time.time() - psutil.Process().create_time()
    except (psutil.Error, OSError):
        return time.perf_counter() - _IMPORTED


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
