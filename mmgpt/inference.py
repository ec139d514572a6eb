"""`answer(text, image)`: the Python API for asking a trained model about an image."""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import torch

from mmgpt.model import MMGPT

logger = logging.getLogger(__name__)

ImageInput = Union[str, os.PathLike, bytes, Any]
DEFAULT_RUN_MODEL = Path("runs") / "default" / "model"
_POINTER = Path(os.environ.get("MMGPT_CACHE", Path.home() / ".cache" / "mmgpt")) / "default_model.txt"
_CACHE: dict[tuple[str, str], MMGPT] = {}


def remember_default_model(path: str | Path) -> None:
    """Record `path` as the model answer() uses when none is named."""
    try:
        _POINTER.parent.mkdir(parents=True, exist_ok=True)
        tmp = _POINTER.with_suffix(".tmp")
        tmp.write_text(str(Path(path).resolve()))
        os.replace(tmp, _POINTER)
    except OSError as e:
        logger.warning("could not record the default model in %s: %s", _POINTER, e)


def default_model_path() -> Path:
    """$MMGPT_MODEL, else ./runs/default/model, else the model the last default training run saved."""
    if os.environ.get("MMGPT_MODEL"):
        return Path(os.environ["MMGPT_MODEL"]).expanduser()
    if (DEFAULT_RUN_MODEL / "config.json").is_file():
        return DEFAULT_RUN_MODEL
    if _POINTER.is_file():
        recorded = Path(_POINTER.read_text().strip())
        if (recorded / "config.json").is_file():
            return recorded
    raise FileNotFoundError(
        "no trained model found: pass model='path/to/model', set MMGPT_MODEL, or train the default one with "
        "`accelerate launch train.py` (it saves runs/default/model)"
    )


def load_model(model: str | Path | MMGPT | None = None, device: str | torch.device | None = None) -> MMGPT:
    """An MMGPT from a folder or hub name (cached between calls), or the default trained model."""
    if isinstance(model, MMGPT):
        return model
    path = str(model) if model is not None else str(default_model_path())
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    key = (str(Path(path).expanduser().resolve()) if Path(path).expanduser().exists() else path, device)
    if key not in _CACHE:
        _CACHE[key] = MMGPT.from_pretrained(path, device=device)
    return _CACHE[key]


def decoding_kwargs(
    max_new_tokens: int | None = None,
    num_beams: int = 1,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float = 1.0,
) -> dict[str, Any]:
    """Checked answer() decoding options -> keyword arguments of `generate`."""
    sample = do_sample if do_sample is not None else any(v is not None for v in (temperature, top_k, top_p))
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if temperature is not None and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "do_sample": sample}
    if sample:
        kwargs.update(temperature=temperature or 1.0, top_k=top_k or 0, top_p=top_p or 1.0)
    if no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = no_repeat_ngram_size
    if repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = repetition_penalty
    return kwargs


def _prompts(model: MMGPT, texts: Sequence[str]) -> list[str]:
    """Apply the model's VQA template; an empty prompt asks for a caption."""
    prompts = []
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"text must be a string, got {type(text).__name__}")
        text = text.strip()
        prompts.append(model.config.caption_prompt if not text else model.config.vqa_template.format(question=text))
    return prompts


def _as_lists(text: Any, image: Any) -> tuple[list[str], list[Any], bool]:
    single = isinstance(text, str)
    texts = [text] if single else list(text)
    images = [image] if single else list(image) if isinstance(image, (list, tuple)) else None
    if images is None:
        raise TypeError("a list of texts needs a list of images of the same length")
    if len(texts) != len(images):
        raise ValueError(f"got {len(texts)} texts but {len(images)} images")
    return texts, images, single


def _batch(model: MMGPT, texts: Sequence[str], images: Sequence[Any]) -> dict[str, torch.Tensor]:
    batch = model.processor(_prompts(model, texts), images)
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def answer(
    text: str | Sequence[str],
    image: ImageInput | Sequence[ImageInput],
    model: str | Path | MMGPT | None = None,
    *,
    max_new_tokens: int | None = None,
    num_beams: int = 1,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float = 1.0,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> str | list[str]:
    """Answer a question about an image (or lists of both, batched); an empty question asks for a caption.

    `image` may be a path, a PIL image, a numpy array or raw bytes. Greedy decoding by default;
    `num_beams` for beam search; `temperature`/`top_k`/`top_p` (with `seed`) for sampling.
    """
    mm = load_model(model, device)
    texts, images, single = _as_lists(text, image)
    kwargs = decoding_kwargs(max_new_tokens, num_beams, do_sample, temperature, top_k, top_p,
                              no_repeat_ngram_size, repetition_penalty)
    if seed is not None:
        torch.manual_seed(seed)
    answers: list[str] = []
    for start in range(0, len(texts), batch_size):
        batch = _batch(mm, texts[start : start + batch_size], images[start : start + batch_size])
        tokens = mm.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], **kwargs)
        answers.extend(mm.processor.decode(tokens))
    return answers[0] if single else answers


def stream_answer(
    text: str,
    image: ImageInput,
    model: str | Path | MMGPT | None = None,
    **decoding: Any,
) -> Iterator[str]:
    """Like answer() for one question, but yields the answer's text piece by piece as it is generated."""
    from transformers import TextIteratorStreamer

    mm = load_model(model, decoding.pop("device", None))
    if not isinstance(text, str):
        raise TypeError("stream_answer takes one text and one image")
    seed = decoding.pop("seed", None)
    kwargs = decoding_kwargs(
        decoding.pop("max_new_tokens", None), decoding.pop("num_beams", 1), decoding.pop("do_sample", None),
        decoding.pop("temperature", None), decoding.pop("top_k", None), decoding.pop("top_p", None),
        decoding.pop("no_repeat_ngram_size", 0), decoding.pop("repetition_penalty", 1.0),
    )
    if decoding:
        raise TypeError(f"unknown decoding options: {sorted(decoding)}")
    if kwargs["num_beams"] > 1:
        raise ValueError("streaming works with greedy or sampled decoding, not beam search")
    if seed is not None:
        torch.manual_seed(seed)
    batch = _batch(mm, [text], [image])
    streamer = TextIteratorStreamer(mm.processor.tokenizer, skip_prompt=False, skip_special_tokens=True)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            mm.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], streamer=streamer, **kwargs)
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    for piece in streamer:
        if piece:
            yield piece
    thread.join()
    if errors:
        raise errors[0]
