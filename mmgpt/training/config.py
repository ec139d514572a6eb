"""Training config: data mixture, optimizer, schedule, precision; nested with the model config."""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from mmgpt.compress import is_quantized
from mmgpt.config import (
    ConfigError,
    ModelConfig,
    PromptTemplates,
    apply_overrides,
    check_config_size,
    check_fields,
    from_dict,
    load_yaml,
    parse_override,
    to_dict,
    upgrade_keys,
)
from mmgpt.data.spec import DatasetSpec
from mmgpt.ranges import check_range


def _default_train_data() -> list:
    # easy-VQA's triangles stand upright, so left-right flips keep its answers true. Caption weight 1.0 in
    # mixed batches: 0.5 left captions naming the wrong place (46% right) and shape (72%); at 1.0 with 3,000
    # steps both are right 98-100% and easy-VQA keeps 99.9% (bench/RESULTS.md)
    return [
        DatasetSpec(format="easy_vqa", split="train", weight=3.0, name="easy_vqa", augment=["hflip"]),
        DatasetSpec(format="shapes_captions", split="train", weight=1.0, name="shapes_captions"),
    ]


def _default_eval_data() -> list:
    return [
        DatasetSpec(format="easy_vqa", split="test", name="easy_vqa_test"),
        DatasetSpec(format="shapes_captions", split="val", name="shapes_captions_val"),
    ]


@dataclass
class DataConfig:
    """Datasets, their mixture, and how images are read."""

    train: list[DatasetSpec] = field(default_factory=_default_train_data)
    eval: list[DatasetSpec] = field(default_factory=_default_eval_data)
    # samples per epoch drawn from the weighted mixture; 0 = the sum of the datasets' sizes
    samples_per_epoch: int = 0
    # decode and transform every image once and keep it in memory (small datasets)
    cache_images: bool = True
    # check every image once before training; bad ones are skipped and counted
    check_images: bool = True
    # stop with an error when more than this share of the training images is bad
    max_bad_fraction: float = 0.01
    num_workers: int = 0
    # up to this many questions about one image sit together in a batch, and the image is encoded once
    # for all of them (1 = draws in random order)
    questions_per_image: int = 1
    # each batch drawn from every training set in the mixture's proportions; false: from one set at a time
    mixed_batches: bool = True
    # examples per eval set during periodic evaluation (0 = all); the final evaluation uses all
    eval_max_examples: int = 1000
    # a control run: every image, in training and evaluation, is one constant grey image, so the model
    # learns only what the question alone gives (mmgpt compare-fusions' "blind" row)
    blind: bool = False

    def __post_init__(self) -> None:
        check_fields(self, "data.", samples_per_epoch=">= 0 (0 = the datasets' total size)", max_bad_fraction="[0, 1]",
                     num_workers=">= 0", questions_per_image=">= 1", eval_max_examples=">= 0 (0 = all)")
        if not self.train:
            raise ConfigError("data.train is empty: name at least one dataset")


@dataclass
class OptimConfig:
    """AdamW with linear warmup and cosine decay, per-component learning rates."""

    lr: float = 4e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-8
    warmup_steps: int = 100
    # the learning rate decays to lr * min_lr_ratio at the last step
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    # per-component factors on lr: text_encoder, image_encoder, fusion, projector, generator
    lr_multipliers: dict = field(default_factory=dict)
    # > 0: evaluation and the saved model use an exponential moving average of the weights (mmgpt.training.ema)
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        check_fields(self, "optim.", lr="> 0", weight_decay=">= 0", eps="> 0", warmup_steps=">= 0",
                     min_lr_ratio="[0, 1]", grad_clip=">= 0 (0 = no clipping)",
                     ema_decay="[0, 1) (0 = no average)")
        if len(self.betas) != 2:
            raise ConfigError(f"optim.betas must have two values, got {self.betas}")
        for i, beta in enumerate(self.betas):
            check_range(f"optim.betas[{i}]", beta, "[0, 1)", error=ConfigError)
        allowed = {"text_encoder", "image_encoder", "fusion", "projector", "generator"}
        unknown = set(self.lr_multipliers) - allowed
        if unknown:
            raise ConfigError(
                f"optim.lr_multipliers: unknown component {sorted(unknown)}; available: {sorted(allowed)}"
            )
        for component, multiplier in self.lr_multipliers.items():
            check_range(f"optim.lr_multipliers.{component}", multiplier, ">= 0", error=ConfigError)


@dataclass
class DistillConfig:
    """Knowledge distillation from a frozen teacher model folder (mmgpt.training.distill); off when teacher is ''."""

    teacher: str = ""
    # loss = (1 - alpha) * CE + alpha * temperature^2 * KL(teacher || student), over answer tokens
    alpha: float = 0.5
    temperature: float = 2.0

    def __post_init__(self) -> None:
        check_fields(self, "distill.", alpha="[0, 1]", temperature="> 0")


MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything that varies between training runs; saved with each run. The defaults are configs/default.yaml."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    # a model folder whose config and weights are the starting point (the model section then comes from it)
    init_from: str = ""
    output_dir: str = "runs/default"
    seed: int = 0
    # per-process micro-batch; the global batch is batch_size * processes * grad_accum_steps
    batch_size: int = 128
    grad_accum_steps: int = 1
    max_steps: int = 3000
    eval_every: int = 1000
    save_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 20
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    compile: bool = False
    # CPU threads per process when training on CPU; 0 = this machine's cores / local processes
    # (`accelerate launch` exports OMP_NUM_THREADS=1 by default, which would leave cores idle)
    cpu_threads: int = 0
    # one-process CPU run, cpu_threads 0: fewer threads while other processes keep cores busy (beside one busy
    # process a 2-core step takes 1.5x its idle time instead of 2.9x). Off by default: a thread count changes
    # how a CPU rounds, so the weights then depend on the load the run met
    follow_cpu_load: bool = False
    # checkpoint and exit once this step is reached (0 = never): for time-limited jobs, resume later
    stop_at_step: int = 0
    # a step whose loss or gradient norm is NaN/inf: false = stop with an error (the last checkpoint stays
    # the last good one), true = skip its update and count it in metrics.json
    skip_nonfinite_steps: bool = False
    # dtype of the weights of frozen parts ("bf16" halves their memory; trained parts stay float32)
    frozen_dtype: str = "no"
    # the image encoder's training forward and backward under bf16 autocast, the rest as mixed_precision
    # says; evaluation and the saved model compute in the model's own dtype. On CPU mixed_precision: bf16
    # slows the default model (bf16 attention backward), while this makes its CNN 1.9x faster. "auto": bf16
    # where the device computes it natively (CPUs with AVX512-BF16/AMX, GPUs with bf16), else "no"
    image_encoder_autocast: str = "auto"

    def __post_init__(self) -> None:
        if self.frozen_dtype not in ("no", "bf16"):
            raise ConfigError(f"frozen_dtype must be one of ('no', 'bf16'), got {self.frozen_dtype!r}")
        if self.image_encoder_autocast not in ("no", "bf16", "auto"):
            raise ConfigError("image_encoder_autocast must be one of ('no', 'bf16', 'auto'), "
                              f"got {self.image_encoder_autocast!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        # numpy's seed, which accelerate's set_seed also sets, takes 0 .. 2**32 - 1 only
        check_fields(self, "", seed=f"[0, {2**32 - 1}]", batch_size=">= 1", grad_accum_steps=">= 1",
                     max_steps=">= 1", eval_every=">= 0 (0 = never)", save_every=">= 0 (0 = only when stopping)",
                     keep_checkpoints=">= 1", log_every=">= 1", cpu_threads=">= 0 (0 = automatic)",
                     stop_at_step=">= 0 (0 = never)")


# keys that change neither the trained model nor its data: a run that differs from configs/default.yaml
# only in these is still the README's main job
NEUTRAL_KEYS = ("cpu_threads", "follow_cpu_load", "log_every", "stop_at_step", "save_every", "keep_checkpoints",
                "data.num_workers")


def _configs_folder() -> Path:
    """configs/, installed as the package data of mmgpt.configs."""
    from importlib import resources

    return Path(str(resources.files("mmgpt.configs")))


def presets() -> list[str]:
    """Names of the preset configs (configs/NAME.yaml), sorted."""
    return sorted(path.stem for path in _configs_folder().glob("*.yaml"))


def default_config_path() -> Path:
    """configs/default.yaml: the README's main job."""
    return _configs_folder() / "default.yaml"


def config_path(name_or_path: str | Path) -> Path:
    """A preset name ('default', 'gpu200m', ...) or a YAML file path -> the YAML file."""
    path = Path(name_or_path)
    if path.is_file() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    if str(name_or_path) not in presets():
        raise ConfigError(f"unknown config preset '{name_or_path}'; available: {', '.join(presets())} "
                          "(or the path of a YAML file)")
    return _configs_folder() / f"{name_or_path}.yaml"


# settings that change neither the model, nor the data order, nor the optimizer state: the only ones a
# resumed run may change (output_dir only says where the run is). max_steps stretches the cosine schedule:
# the learning rate follows the new schedule from the step the run stopped at
RESUMABLE_KEYS = ("max_steps", "eval_every", "log_every", "save_every", "keep_checkpoints", "stop_at_step",
                  "cpu_threads", "follow_cpu_load", "output_dir", "data.num_workers", "data.eval_max_examples")
# dataset fields that name files: relative ones are read from the folder of the config file that sets them
DATA_PATH_FIELDS = ("path", "images", "annotations")


def _deep_merge(base: dict, top: dict, cls: type | None = None) -> dict:
    """`base` with `top`'s keys over it: config sections merge key by key, any other value is replaced whole.

    A free mapping such as a `kwargs` (one model's settings) or `optim.lr_multipliers` is one value, so a
    file that sets it is not mixed with its base's (a gpt2 kwargs never gains llama's sizes).
    """
    hints = typing.get_type_hints(cls or TrainConfig)
    merged = dict(base)
    for key, value in top.items():
        section = hints.get(key)
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and dataclasses.is_dataclass(section):
            merged[key] = _deep_merge(merged[key], value, section)
        else:
            merged[key] = value
    return merged


def _anchor_data_paths(data: dict, folder: Path) -> dict:
    """`data` with the relative dataset paths of its data.train and data.eval made absolute against `folder`."""
    section = data.get("data")
    if not isinstance(section, dict):
        return data
    section = dict(section)
    for split in ("train", "eval"):
        specs = section.get(split)
        if not isinstance(specs, list):
            continue
        anchored = []
        for spec in specs:
            if isinstance(spec, dict):
                spec = dict(spec)
                for name in DATA_PATH_FIELDS:
                    value = spec.get(name)
                    # a hub name (hf://org/name) is no file
                    if isinstance(value, str) and value and "://" not in value \
                            and not Path(value).expanduser().is_absolute():
                        spec[name] = str((folder / value).resolve())
            anchored.append(spec)
        section[split] = anchored
    return {**data, "data": section}


def resolve_yaml(name_or_path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """A preset or YAML file as one mapping: its `base:` chain merged under it, its data paths anchored.

    `base:` names a preset or another YAML file (relative to this file's folder); the file's own keys
    override the base's. output_dir is never inherited: a file that does not set it writes to runs/<its stem>.
    """
    path = config_path(name_or_path)
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain[_chain.index(resolved):], resolved))
        raise ConfigError(f"config 'base:' chain loops: {cycle}")
    # old key spellings first, so a file and its base that spell one setting differently still merge
    data = _anchor_data_paths(upgrade_keys(TrainConfig, load_yaml(path)), resolved.parent)
    base = data.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"config file {path}: 'base' must name a preset or a YAML file, got {base!r}")
        if base not in presets() or (resolved.parent / base).is_file():
            # a file named by a relative path sits next to the file that names it
            base = str(resolved.parent / Path(base).expanduser())
        inherited = resolve_yaml(base, (*_chain, resolved))
        inherited.pop("output_dir", None)
        data = _deep_merge(inherited, data)
        # each file is capped alone; a long chain of them must not add up to more than one may hold
        check_config_size(data, f"config file {path} with its base: chain")
    data.setdefault("output_dir", f"runs/{path.stem}")
    return data


def load_train_config(name_or_path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """A preset or YAML file (with its `base:` chain), with `key=value` overrides, as a validated TrainConfig."""
    return config_from_data(resolve_yaml(name_or_path), overrides)


def prompt_templates(name_or_path: str | Path) -> PromptTemplates:
    """The prompt templates a training preset or YAML trains with (what `mmgpt validate --config` reads)."""
    cfg = load_train_config(name_or_path)
    return PromptTemplates.from_config(cfg.model)


def config_from_data(data: dict, overrides: list[str] | None = None) -> TrainConfig:
    """A resolved config mapping with `key=value` overrides, as a validated TrainConfig."""
    data = apply_overrides(data, list(overrides or []), defaults=to_dict(TrainConfig()), cls=TrainConfig)
    # a dataset path given on the command line is relative to where the command ran (a file's, to the file): made
    # absolute now, the saved config.yaml and a resume from another folder read the same files
    data = _anchor_data_paths(data, Path.cwd())
    if isinstance(data.get("output_dir"), str):
        if not data["output_dir"].strip():
            raise ConfigError("output_dir must name a folder, got an empty string")
        # every part of a run (its files, checkpoints and model) goes to one folder, ~ expanded once for all
        data["output_dir"] = str(Path(data["output_dir"]).expanduser())
    if data.get("init_from"):
        data = _model_from_folder(data, list(overrides or []))
    return from_dict(TrainConfig, data)


def _model_from_folder(data: dict, overrides: list[str]) -> dict:
    """`data` with its model section replaced by the init_from folder's; model overrides must agree with it."""
    from mmgpt.config import load_json

    folder = Path(str(data["init_from"])).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file() or not (folder / "model.safetensors").is_file():
        raise ConfigError(f"init_from: {folder} is not a model folder (needs config.json and model.safetensors)")
    saved = load_json(config_file)
    if "model" not in saved:
        raise ConfigError(f"init_from: {config_file} has no 'model' key, so it is not an mmgpt model config")
    if is_quantized(saved):
        raise ConfigError(f"init_from: {folder} is quantised and cannot be trained; start from its fp32 source")
    reference = to_dict(from_dict(ModelConfig, copy.deepcopy(saved["model"]), prefix="model"))
    for text in overrides:
        path, _ = parse_override(text)
        # freezing and LoRA change what trains, not the model, so a later stage may set them
        if path[0] != "model" or path[-1] == "freeze" or "lora" in path:
            continue
        changed = apply_overrides({"model": copy.deepcopy(reference)}, [text], cls=TrainConfig)["model"]
        if to_dict(from_dict(ModelConfig, changed, prefix="model")) != reference:
            raise ConfigError(f"override '{'.'.join(path)}' conflicts with init_from: the model comes from "
                              f"{config_file}; drop the override or start from another folder")
    model = reference
    # what trains may also be set by the later stage's own file (its base: chain included)
    for part, section in (data.get("model") or {}).items():
        if isinstance(section, dict) and isinstance(model.get(part), dict):
            model[part].update({k: copy.deepcopy(v) for k, v in section.items() if k in ("freeze", "lora")})
    for text in overrides:
        if parse_override(text)[0][0] == "model":
            model = apply_overrides({"model": model}, [text], cls=TrainConfig)["model"]
    return {**data, "model": model}


def resumed_config(saved: Path, overrides: list[str]) -> TrainConfig:
    """The config of a resumed run: the run's saved config.yaml, changed only by overrides of RESUMABLE_KEYS.

    An override of any other key is refused unless it repeats the saved value: it would change the model,
    the data order or the optimizer state the checkpoint holds.
    """
    data = load_yaml(saved)
    cfg = config_from_data(copy.deepcopy(data))
    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key in RESUMABLE_KEYS:
            continue
        if config_from_data(copy.deepcopy(data), [text]) != cfg:
            raise ConfigError(
                f"--resume: '{key}' cannot change when a run is resumed (it would change the model, the data "
                f"order or the optimizer state of its checkpoints; the run's own settings are in {saved}); "
                f"a resumed run may change only: {', '.join(RESUMABLE_KEYS)}. Start a new run for other settings"
            )
    return config_from_data(data, overrides)


def is_default_job(cfg: TrainConfig) -> bool:
    """Whether `cfg` is the README's main job: configs/default.yaml, changed at most in NEUTRAL_KEYS."""
    default = load_train_config(default_config_path())

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
