"""The causal transformer generator: any AutoModelForCausalLM by name, path or config."""
from __future__ import annotations

from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from mmgpt.config import ConfigError, GeneratorConfig
from mmgpt.hf_models import build_hf_model


def build_generator(
    cfg: GeneratorConfig, tokenizer: PreTrainedTokenizerBase, load_weights: bool = True
) -> PreTrainedModel:
    """Load a pretrained causal LM (name or folder) or build one from `cfg.kwargs`."""
    attn = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    model = build_hf_model(
        AutoModelForCausalLM,
        cfg.name,
        cfg.kwargs,
        key="model.generator.kwargs",
        missing_model_type="model.generator needs a 'name' (hub name or local folder) or kwargs with "
        "'model_type' (gpt2, llama, qwen2, ...)",
        load_weights=load_weights,
        tokenizer=tokenizer,
        overrides={
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        **attn,
    )
    vocab = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocab:
        raise ConfigError(
            f"model.generator.name '{cfg.name}': generator vocabulary ({vocab}) is smaller than its tokenizer "
            f"({len(tokenizer)} tokens)"
        )
    return model
