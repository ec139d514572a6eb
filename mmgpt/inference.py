"""`answer(text, image)`: the Python API for asking a trained model about an image."""
from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from mmgpt.model import MMGPT, is_model_folder, saved_model_folder
from mmgpt.saving import write_text_atomic

logger = logging.getLogger(__name__)

ImageInput = Union[str, os.PathLike, bytes, Any]
DEFAULT_RUN_MODEL = Path("runs") / "default" / "model"
_POINTER = Path(os.environ.get("MMGPT_CACHE", Path.home() / ".cache" / "mmgpt")) / "default_model.txt"
_CACHE: dict[tuple[str, str], MMGPT] = {}
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed's range


def remember_default_model(path: str | Path) -> None:
    """Record `path` as the model answer() uses when none is named (training calls it for the main job only)."""
    if not is_model_folder(Path(path)):
        raise FileNotFoundError(f"{path} is not a saved mmgpt model folder, so it cannot become the default model")
    try:
        write_text_atomic(_POINTER, str(Path(path).resolve()))
    except OSError as e:
        logger.warning("could not record the default model in %s: %s", _POINTER, e)


def default_model_path() -> str | Path:
    """$MMGPT_MODEL (a folder or hf://org/name), else ./runs/default/model, else the last default run's model."""
    named = os.environ.get("MMGPT_MODEL")
    if named:
        # a Path would fold hf://org/name into hf:/org/name
        return named if named.startswith("hf://") else Path(named).expanduser()
    # saved_model_folder: a save killed between its two renames leaves the model aside, still loadable
    if is_model_folder(saved_model_folder(DEFAULT_RUN_MODEL)):
        return DEFAULT_RUN_MODEL
    if _POINTER.is_file():
        recorded = Path(_POINTER.read_text().strip())
        if is_model_folder(saved_model_folder(recorded)):
            return recorded
    raise FileNotFoundError(
        "no trained model found: pass model='path/to/model', set MMGPT_MODEL, or train the default one with "
        "`accelerate launch train.py` (it saves runs/default/model)"
    )


def load_model(model: str | Path | MMGPT | None = None, device: str | torch.device | None = None) -> MMGPT:
    """An MMGPT from a local folder or `hf://org/name` (cached between calls), or the default trained model."""
    if isinstance(model, MMGPT):
        return model
    path = str(model) if model is not None else str(default_model_path())
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    key = (str(Path(path).expanduser().resolve()) if Path(path).expanduser().exists() else path, device)
    if key not in _CACHE:
        _CACHE[key] = MMGPT.from_pretrained(path, device=device)
    return _CACHE[key]


def _int_option(name: str, value: Any, minimum: int, maximum: int | None = None, none: str = "") -> int | None:
    """`value` as an int in [minimum, maximum], None when `none` says what None means, else TypeError/ValueError."""
    allowed = f"an int >= {minimum}" if maximum is None else f"an int in [{minimum}, {maximum}]"
    allowed = f"None ({none}) or {allowed}" if none else allowed
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return int(value)


def _real_option(name: str, value: Any, allowed: str, valid: Any, none: str = "") -> float | None:
    """`value` as a finite float accepted by `valid`, None when `none` says what None means."""
    if value is None and none:
        return None
    allowed = f"None ({none}) or {allowed}" if none else allowed
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or not valid(value):
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return float(value)


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
    """Checked answer() decoding options -> keyword arguments of `generate` (TypeError/ValueError name the option)."""
    max_new_tokens = _int_option("max_new_tokens", max_new_tokens, 0, none="the model's max_answer_length")
    num_beams = _int_option("num_beams", num_beams, 1)
    if do_sample is not None and not isinstance(do_sample, bool):
        raise TypeError(f"do_sample must be None (sample when temperature/top_k/top_p is given) or a bool, "
                        f"got {type(do_sample).__name__} {do_sample!r}")
    temperature = _real_option("temperature", temperature, "a finite number > 0", lambda v: v > 0, none="1.0")
    top_k = _int_option("top_k", top_k, 0, none="no top-k filter")
    top_p = _real_option("top_p", top_p, "a number in (0, 1]", lambda v: 0 < v <= 1, none="no top-p filter")
    no_repeat_ngram_size = _int_option("no_repeat_ngram_size", no_repeat_ngram_size, 0)
    repetition_penalty = _real_option("repetition_penalty", repetition_penalty, "a finite number > 0",
                                      lambda v: v > 0)
    sample = do_sample if do_sample is not None else any(v is not None for v in (temperature, top_k, top_p))
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "do_sample": sample}
    if sample:
        kwargs.update(temperature=temperature or 1.0, top_k=top_k or 0, top_p=top_p or 1.0)
    if no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = no_repeat_ngram_size
    if repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = repetition_penalty
    return kwargs


def check_seed(seed: Any) -> int | None:
    """None or an int a torch.Generator accepts, else TypeError/ValueError naming `seed`."""
    return _int_option("seed", seed, 0, MAX_SEED, none="unseeded")


class _GeneratorSampler(LogitsProcessor):
    """Sample the next token with a private torch.Generator; return scores that make greedy search pick it.

    HF `generate` samples from torch's global RNG, which every thread shares: a seed set there is not
    reproducible under concurrency and disturbs the caller's own random state. HF's own warpers
    (temperature, top-k, top-p, in its order) shape the distribution, so the sampling is the same.
    """

    def __init__(self, temperature: float, top_k: int, top_p: float, generator: torch.Generator) -> None:
        self.warpers = LogitsProcessorList()
        if temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(temperature))
        if top_k:
            self.warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.generator = generator

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """scores (B, V) -> 0 at the sampled token of each row, -inf elsewhere."""
        probs = torch.softmax(self.warpers(input_ids, scores).float(), dim=-1)
        tokens = torch.multinomial(probs, num_samples=1, generator=self.generator)
        return torch.full_like(scores, float("-inf")).scatter_(1, tokens, 0.0)


_GLOBAL_RNG_LOCK = threading.Lock()


@contextlib.contextmanager
def seeded_decoding(kwargs: dict[str, Any], seed: int | None, device: torch.device) -> Iterator[dict[str, Any]]:
    """Yield `generate` kwargs that sample reproducibly from `seed` (None: fresh) without torch's global RNG.

    `kwargs` is decoding_kwargs() output; the yielded kwargs serve every generate call inside the block.
    """
    if not kwargs.get("do_sample"):
        yield kwargs
        return
    device = torch.device(device)
    if kwargs["num_beams"] == 1:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed) if seed is not None else generator.seed()
        sampler = _GeneratorSampler(kwargs["temperature"], kwargs["top_k"], kwargs["top_p"], generator)
        plain = {k: v for k, v in kwargs.items() if k not in ("temperature", "top_k", "top_p")}
        yield {**plain, "do_sample": False, "logits_processor": LogitsProcessorList([sampler])}
        return
    # beam sampling draws inside HF's beam search, out of a logits processor's reach: give it a private,
    # seeded copy of the global RNG, one call at a time (other code drawing from the global RNG meanwhile
    # still changes the answer, and its draws are undone when the copy is put back)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=cuda):
        seed = seed if seed is not None else int(torch.Generator().seed())
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield kwargs


def _check_text(text: Any, name: str) -> str:
    """A prompt that is a str of valid Unicode, else TypeError/ValueError naming it."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid Unicode: lone surrogate {text[e.start]!r} at index {e.start} "
                         f"(decode its bytes with errors='replace' or remove it)") from None
    return text


def _as_lists(text: Any, image: Any) -> tuple[list[str], list[Any], bool]:
    """(texts, images, single) for one text and image, or equal-length lists/tuples of both."""
    if isinstance(text, str):
        return [_check_text(text, "text")], [image], True
    if not isinstance(text, (list, tuple)):
        raise TypeError(f"text must be a str or a list/tuple of str, got {type(text).__name__}")
    texts = [_check_text(t, f"text[{i}]") for i, t in enumerate(text)]
    if not isinstance(image, (list, tuple)):
        raise TypeError(f"a list of texts needs a list of images of the same length, got {type(image).__name__}")
    if len(texts) != len(image):
        raise ValueError(f"got {len(texts)} texts but {len(image)} images")
    return texts, list(image), False


def _check_request(text: Any, image: Any, batch_size: int, seed: Any,
                   decoding: dict[str, Any]) -> tuple[list[str], list[Any], bool, dict[str, Any], int | None]:
    """The one validator of answer() and stream_answer(): (texts, images, single, generate kwargs, seed)."""
    texts, images, single = _as_lists(text, image)
    _int_option("batch_size", batch_size, 1)
    return texts, images, single, decoding_kwargs(**decoding), check_seed(seed)


def _load_quietly(model: str | Path | MMGPT | None, device: str | torch.device | None) -> MMGPT:
    """load_model without a trace in torch's global RNG (building the parts draws initial weights from it)."""
    with torch.random.fork_rng(devices=[]):
        return load_model(model, device)


def _prompts(model: MMGPT, texts: Sequence[str]) -> list[str]:
    """Apply the model's VQA template; an empty prompt asks for a caption."""
    prompts = []
    for text in texts:
        text = text.strip()
        prompts.append(model.config.caption_prompt if not text else model.config.vqa_template.format(question=text))
    return prompts


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
    `max_new_tokens=0` answers "" (the images are still read and checked).
    """
    texts, images, single, kwargs, seed = _check_request(text, image, batch_size, seed, dict(
        max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample, temperature=temperature,
        top_k=top_k, top_p=top_p, no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty))
    mm = _load_quietly(model, device)
    answers: list[str] = []
    with seeded_decoding(kwargs, seed, next(mm.parameters()).device) as generate_kwargs:
        for start in range(0, len(texts), batch_size):
            batch = _batch(mm, texts[start : start + batch_size], images[start : start + batch_size])
            if kwargs["max_new_tokens"] == 0:  # generate would substitute the model's default length
                answers.extend([""] * len(batch["input_ids"]))
                continue
            tokens = mm.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], **generate_kwargs)
            answers.extend(mm.processor.decode(tokens))
    return answers[0] if single else answers


def stream_answer(
    text: str,
    image: ImageInput,
    model: str | Path | MMGPT | None = None,
    *,
    max_new_tokens: int | None = None,
    do_sample: bool | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    no_repeat_ngram_size: int = 0,
    repetition_penalty: float = 1.0,
    num_beams: int = 1,
    device: str | torch.device | None = None,
) -> Iterator[str]:
    """Like answer() for one question, but yields the answer's text piece by piece as it is generated.

    The arguments are checked, the model loaded and the image read when it is called, not on the first piece.
    """
    if not isinstance(text, str):
        raise TypeError(f"stream_answer takes one text (a str) and one image, got text of type {type(text).__name__}")
    texts, images, _, kwargs, seed = _check_request(text, image, 1, seed, dict(
        max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample, temperature=temperature,
        top_k=top_k, top_p=top_p, no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty))
    if kwargs["num_beams"] > 1:
        raise ValueError(f"num_beams must be 1 for streaming (greedy or sampled decoding), got {kwargs['num_beams']}")
    mm = _load_quietly(model, device)
    batch = _batch(mm, texts, images)
    if kwargs["max_new_tokens"] == 0:
        return iter(())
    return _stream(mm, batch, kwargs, seed)


def _stream(mm: MMGPT, batch: dict[str, torch.Tensor], kwargs: dict[str, Any], seed: int | None) -> Iterator[str]:
    """Run generate in a thread and yield the streamer's pieces; its errors are re-raised here."""
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(mm.processor.tokenizer, skip_prompt=False, skip_special_tokens=True)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with seeded_decoding(kwargs, seed, batch["input_ids"].device) as generate_kwargs:
                mm.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], streamer=streamer,
                            **generate_kwargs)
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
