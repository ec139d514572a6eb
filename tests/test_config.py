"""Config tree: YAML, typed `key=value` overrides, and errors that name the dotted key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmgpt.config import (
    ConfigError,
    FusionConfig,
    GeneratorConfig,
    ModelConfig,
    apply_overrides,
    from_dict,
    load_config,
    parse_override,
    to_dict,
)
from mmgpt.training.config import TrainConfig, load_train_config

DEFAULT_YAML = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_yaml_values_and_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, {"fusion": {"type": "product", "dim": 64}, "max_answer_length": 12,
                            "generator": {"kwargs": {"model_type": "gpt2", "n_embd": 32}}})
    config = load_config(ModelConfig, path)
    assert config.fusion == FusionConfig(type="product", dim=64)
    assert config.max_answer_length == 12
    # a dict-typed field is replaced as a whole, not merged into the default
    assert config.generator.kwargs == {"model_type": "gpt2", "n_embd": 32}
    # untouched sections keep their defaults
    assert config.text_encoder == ModelConfig().text_encoder


def test_overrides_are_dotted_and_typed(tmp_path: Path) -> None:
    path = write(tmp_path, {"fusion": {"type": "product"}})
    config = load_config(ModelConfig, path, [
        "fusion.dim=96",                      # int
        "fusion.dropout=1e-1",                # float written with an exponent
        "fusion.freeze=true",                 # bool
        "image_encoder.keep_prefix_tokens=False",
        "image_encoder.name=vit_tiny_patch16_224",  # string
        "caption_prompt=Describe the image.",
        "image_encoder.kwargs.img_size=[48, 32]",  # into a dict field, as a list
        "generator.kwargs.hidden_size=48",
        "fusion.type=cross_attention",        # a later override wins over the file
    ])
    assert config.fusion.dim == 96 and type(config.fusion.dim) is int
    assert config.fusion.dropout == 0.1 and type(config.fusion.dropout) is float
    assert config.fusion.freeze is True and config.image_encoder.keep_prefix_tokens is False
    assert config.image_encoder.name == "vit_tiny_patch16_224"
    assert config.caption_prompt == "Describe the image."
    assert config.image_encoder.kwargs == {"img_size": [48, 32]}
    assert config.generator.kwargs["hidden_size"] == 48
    assert config.generator.kwargs["model_type"] == "llama", "other kwargs keys are kept"
    assert config.fusion.type == "cross_attention"


def test_train_config_overrides_floats_lists_and_nested_model_keys() -> None:
    config = load_config(TrainConfig, None, [
        "optim.lr=3e-4", "optim.eps=1E-6", "optim.weight_decay=0", "optim.betas=[0.9, 0.95]",
        "batch_size=8", "model.fusion.num_heads=8", "mixed_precision=bf16", "output_dir=runs/x=1",
    ])
    assert config.optim.lr == 3e-4 and type(config.optim.lr) is float
    assert config.optim.eps == 1e-6
    assert config.optim.weight_decay == 0.0 and type(config.optim.weight_decay) is float, "int -> float is lossless"
    assert config.optim.betas == [0.9, 0.95]
    assert config.batch_size == 8 and config.model.fusion.num_heads == 8
    assert config.mixed_precision == "bf16"
    assert config.output_dir == "runs/x=1", "only the first '=' splits key from value"


@pytest.mark.parametrize("text, expected", [
    ("a=3", 3), ("a=-2", -2), ("a=3e-4", 3e-4), ("a=2.5", 2.5), ("a=1e3", 1000.0), ("a=true", True),
    ("a=False", False), ("a=hello", "hello"), ("a=[1, 2]", [1, 2]), ("a=[x, y]", ["x", "y"]), ("a=", ""),
    ("a={b: 1}", {"b": 1}), ("a=null", None),
])
def test_parse_override_types(text: str, expected: object) -> None:
    key, value = parse_override(text)
    assert key == ["a"]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("value", [
    "Question: {question} Answer:",  # YAML would read a mapping
    "a: b: c",                       # YAML would fail to parse
    "#1 describe",                   # YAML would read a comment, i.e. nothing
    "- {question}",                  # YAML would read a list
])
def test_string_overrides_that_look_like_yaml_stay_strings(value: str) -> None:
    config = load_config(ModelConfig, None, [f"caption_prompt={value}"])
    assert config.caption_prompt == value
    config = load_config(ModelConfig, None, [f"vqa_template={value} {{question}}"])
    assert config.vqa_template == f"{value} {{question}}"


def test_overrides_without_a_file_and_dotted_keys_create_sections() -> None:
    data = apply_overrides({}, ["fusion.dim=8", "fusion.type=product", "seed=3"])
    assert data == {"fusion": {"dim": 8, "type": "product"}, "seed": 3}


def test_unknown_key_names_the_dotted_key_and_available_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(ModelConfig, None, ["fusion.nme=product"])
    message = str(info.value)
    assert "unknown config key 'fusion.nme'" in message
    for name in ("type", "dim", "num_layers", "num_heads", "dropout", "freeze"):
        assert name in message.split("available:")[1]
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.text_encoder\.max_len'; available: .*max_len"):
        load_config(TrainConfig, None, ["model.text_encoder.max_len=8"])
    with pytest.raises(ConfigError, match=r"unknown config key 'fusoin'; available: text_encoder, image_encoder"):
        load_config(ModelConfig, None, ["fusoin.dim=8"])
    # the same from a YAML file
    path = write(tmp_path, {"image_encoder": {"typ": "timm"}})
    with pytest.raises(ConfigError, match=r"unknown config key 'image_encoder\.typ'; available: type, name"):
        load_config(ModelConfig, path)


@pytest.mark.parametrize("override, message", [
    ("fusion.dim=wide", "config key 'fusion.dim' must be int, got 'wide'"),
    ("fusion.dim=2.5", "config key 'fusion.dim' must be int, got 2.5"),
    ("fusion.dim=true", "config key 'fusion.dim' must be int, got True"),
    ("fusion.freeze=maybe", "config key 'fusion.freeze' must be bool, got 'maybe'"),
    ("fusion.dropout=high", "config key 'fusion.dropout' must be float, got 'high'"),
    ("generator.kwargs=[1]", "config key 'generator.kwargs' must be a mapping"),
    ("fusion=3", "config key 'fusion' must be a mapping, got 3"),
    ("caption_prompt=[1, 2]", "config key 'caption_prompt' must be str"),
])
def test_wrong_type_names_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(ModelConfig, None, [override])
    assert message in str(info.value)


def test_wrong_types_in_nested_lists_and_train_config_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config key 'optim\.betas\[1\]' must be float, got 'x'"):
        load_config(TrainConfig, None, ["optim.betas=[0.9, x]"])
    with pytest.raises(ConfigError, match=r"config key 'optim\.lr' must be float"):
        load_config(TrainConfig, write(tmp_path, {"optim": {"lr": "fast"}}))
    with pytest.raises(ConfigError, match=r"config key 'model\.fusion\.num_layers' must be int"):
        load_config(TrainConfig, None, ["model.fusion.num_layers=one"])


def test_bad_override_syntax_and_non_sections() -> None:
    with pytest.raises(ConfigError, match="must look like key=value"):
        load_config(ModelConfig, None, ["fusion.dim"])
    with pytest.raises(ConfigError, match="empty key"):
        load_config(ModelConfig, None, ["=3"])
    with pytest.raises(ConfigError, match=r"'fusion\.dim' is not a section"):
        load_config(ModelConfig, None, ["fusion.dim=8", "fusion.dim.x=1"])


def test_value_checks_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model\.max_answer_length must be >= 2, got 1"):
        load_config(ModelConfig, None, ["max_answer_length=1"])
    with pytest.raises(ConfigError, match=r"model\.vqa_template must contain '\{question\}'"):
        load_config(ModelConfig, None, ["vqa_template=Q:"])
    with pytest.raises(ConfigError, match="mixed_precision must be one of"):
        load_config(TrainConfig, None, ["mixed_precision=fp8x"])


def test_yaml_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(ModelConfig, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(ModelConfig, write(tmp_path, "fusion: [1, 2\n"))
    with pytest.raises(ConfigError, match="must hold a mapping at the top level"):
        load_config(ModelConfig, write(tmp_path, "- 1\n- 2\n"))
    # an empty file is the default config
    assert load_config(ModelConfig, write(tmp_path, "")) == ModelConfig()


def test_config_round_trips_through_yaml(tmp_path: Path) -> None:
    overrides = ["optim.lr=3e-4", "model.fusion.type=product", "model.image_encoder.kwargs.img_size=32"]
    config = load_config(TrainConfig, None, overrides)
    path = write(tmp_path, to_dict(config))
    assert load_config(TrainConfig, path) == config
    assert from_dict(ModelConfig, to_dict(config.model)) == config.model


def test_shipped_default_config_loads() -> None:
    config = load_config(TrainConfig, DEFAULT_YAML)
    assert isinstance(config.model, ModelConfig)
    assert config.optim.lr > 0 and config.model.fusion.dim > 0


def test_override_into_a_default_mapping_keeps_its_other_keys(tmp_path: Path) -> None:
    # the file does not mention generator.kwargs, so the override edits the default mapping
    config = load_config(ModelConfig, None, ["generator.kwargs.num_hidden_layers=3"])
    assert config.generator.kwargs == {**ModelConfig().generator.kwargs, "num_hidden_layers": 3}
    # the training command line does the same
    from mmgpt.training.loop import parse_args

    path = write(tmp_path, {"output_dir": str(tmp_path / "run")})
    train, _ = parse_args(["--config", str(path), "model.generator.kwargs.num_hidden_layers=3", "optim.lr=1e-3"])
    assert train.model.generator.kwargs == config.generator.kwargs
    assert train.optim.lr == 1e-3 and train.output_dir == str(tmp_path / "run")


def test_no_and_yes_are_text_for_text_settings_and_booleans_for_boolean_ones(tmp_path: Path) -> None:
    # YAML 1.1 read an unquoted no as False: `mixed_precision=no` was refused as "must be str, got False"
    cfg = load_train_config("default", ["mixed_precision=no", "image_encoder_autocast=no", "frozen_dtype=no",
                                        "model.generator.freeze=yes", "model.fusion.freeze=off"])
    assert (cfg.mixed_precision, cfg.image_encoder_autocast, cfg.frozen_dtype) == ("no", "no", "no")
    assert cfg.model.generator.freeze is True and cfg.model.fusion.freeze is False
    path = tmp_path / "mine.yaml"
    path.write_text("base: default\nmixed_precision: no\nmodel:\n  image_encoder: {freeze: yes}\n")
    cfg = load_train_config(str(path))
    assert cfg.mixed_precision == "no" and cfg.model.image_encoder.freeze is True
    with pytest.raises(ConfigError, match="'model.generator.freeze' must be bool, got 'maybe'"):
        load_train_config("default", ["model.generator.freeze=maybe"])


def test_naming_a_generator_drops_the_defaults_from_scratch_kwargs(tmp_path: Path) -> None:
    # the README's own-data config: base: default plus a named generator; its kwargs are the default's
    (tmp_path / "my_run.yaml").write_text("base: default\nmodel:\n  generator: {name: org/some-lm}\n")
    assert load_train_config(str(tmp_path / "my_run.yaml")).model.generator.kwargs == {}
    assert load_train_config("default", ["model.generator.name=org/some-lm"]).model.generator.kwargs == {}
    assert GeneratorConfig(name="org/some-lm").kwargs == {}
    # set on purpose, they are changes to the named model's config and stay
    assert GeneratorConfig(name="org/some-lm", kwargs={"rope_theta": 5e5}).kwargs == {"rope_theta": 5e5}
    assert GeneratorConfig().kwargs["hidden_size"] == 128


def test_command_line_paths_and_output_dir_mean_the_same_from_any_folder(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_train_config("default", ["data.train=[{format: jsonl, path: my_data/train.jsonl}]",
                                        "output_dir=~/runs/x"])
    # saved in config.yaml as absolute: a resume from another folder reads the same file, not its own my_data/
    assert cfg.data.train[0].path == str(tmp_path / "my_data" / "train.jsonl")
    # one folder for the whole run, not a literal ./~ beside a model in $HOME
    assert cfg.output_dir == str(tmp_path / "home" / "runs" / "x")
    with pytest.raises(ConfigError, match="output_dir must name a folder, got an empty string"):
        load_train_config("default", ["output_dir="])


def test_a_key_given_twice_in_a_config_file_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text("base: default\noptim:\n  lr: 1.0e-3\n  weight_decay: 0.0\n  lr: 5.0e-4\n")
    with pytest.raises(ConfigError, match=r"twice.yaml is not valid YAML: key 'lr' appears twice in one mapping "
                                          r"\(line 5\)"):
        load_train_config(str(path))
    # a merge key's mapping may still be overridden by the mapping's own keys
    path.write_text("base: default\nx: &d {lr: 1.0e-3}\noptim:\n  <<: *d\n  lr: 5.0e-4\n")
    with pytest.raises(ConfigError, match="unknown config key 'x'"):
        load_train_config(str(path))
