"""The causal transformer generator: any AutoModelForCausalLM by name, path or config."""
from __future__ import annotations

from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from mmgpt.config import ConfigError, GeneratorConfig


def build_generator(
    cfg: GeneratorConfig, tokenizer: PreTrainedTokenizerBase, load_weights: bool = True
) -> PreTrainedModel:
    """Load a pretrained causal LM (name or folder) or build one from `cfg.hf_config`."""
    attn = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    if cfg.name:
        if load_weights:
            model = AutoModelForCausalLM.from_pretrained(cfg.name, **attn)
        else:
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(cfg.name), **attn)
    else:
        kwargs = dict(cfg.hf_config)
        if "model_type" not in kwargs:
            raise ConfigError(
                "model.generator needs a 'name' (hub name or local folder) or an hf_config with "
                "'model_type' (gpt2, llama, qwen2, ...)"
            )
        kwargs.setdefault("vocab_size", len(tokenizer))
        if kwargs["vocab_size"] < len(tokenizer):
            raise ConfigError(
                f"model.generator.hf_config.vocab_size ({kwargs['vocab_size']}) is smaller than the "
                f"tokenizer ({len(tokenizer)} tokens)"
            )
        kwargs.update(
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
        )
        try:
            config = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
        except ValueError as e:
            raise ConfigError(f"model.generator.hf_config: {e}") from e
        model = AutoModelForCausalLM.from_config(config, **attn)
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise ConfigError(
            f"model.generator.name '{cfg.name}': generator vocabulary ({vocab}) is smaller than its tokenizer "
            f"({len(tokenizer)} tokens)"
        )
    return model
