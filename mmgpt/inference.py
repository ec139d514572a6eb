"""`answer(text, image)`: the Python API for asking a trained model about an image.

torch, transformers and the model are imported when a saved model is used, not at import: a folder written by
`mmgpt export` is answered through mmgpt.runtime, in an install without torch (docs/deployment.md, *Export to ONNX*).
"""
from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmgpt.config import PromptTemplates
from mmgpt.decoding import (
    check_answer_length,
    check_decoding_options,
    check_seed,
    int_option,
    resolve_generation_config,
    set_values,
)
from mmgpt.images import ImageInput
from mmgpt.prompts import question_prompt
from mmgpt.saving import write_text_atomic

if TYPE_CHECKING:
    import torch
    from transformers import GenerationConfig

    from mmgpt.model import MMGPT

logger = logging.getLogger(__name__)

DEFAULT_RUN_MODEL = Path("runs") / "default" / "model"
_POINTER = Path(os.environ.get("MMGPT_CACHE", Path.home() / ".cache" / "mmgpt")) / "default_model.txt"
_CACHE: dict[tuple[str, str], MMGPT] = {}
# mmgpt.runtime.OnnxVLM of each exported folder used (mmgpt.exported_model.ExportedModel once asked to sample,
# choose or stream)
_EXPORTS: dict[str, Any] = {}


def remember_default_model(path: str | Path) -> None:
    """Record `path` as the model answer() uses when none is named (training calls it for the main job only)."""
    from mmgpt.model_folder import is_model_folder

    if not is_model_folder(Path(path)):
        raise FileNotFoundError(f"{path} is not a saved mmgpt model folder, so it cannot become the default model")
    try:
        write_text_atomic(_POINTER, str(Path(path).resolve()))
    except OSError as e:
        logger.warning("could not record the default model in %s: %s", _POINTER, e)


def default_model_path() -> str | Path:
    """$MMGPT_MODEL (a folder or hf://org/name), else ./runs/default/model, else the last default run's model."""
    from mmgpt.model_folder import is_model_folder, saved_model_folder

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
    import torch

    from mmgpt.model import MMGPT

    if isinstance(model, MMGPT):
        return model
    path = str(model) if model is not None else str(default_model_path())
    device = str(device or ("cuda" if torch.cuda.is_available() and not _cpu_only(path) else "cpu"))
    key = (str(Path(path).expanduser().resolve()) if Path(path).expanduser().exists() else path, device)
    if key not in _CACHE:
        _CACHE[key] = MMGPT.from_pretrained(path, device=device)
    return _CACHE[key]


def load_model_or_export(path: str | Path, device: str | torch.device | None = None) -> Any:
    """An mmgpt.exported_model.ExportedModel for an `mmgpt export` folder (CPU only; as many onnxruntime threads
    as torch uses), else the MMGPT that load_model reads: what `mmgpt serve` and the eval scripts run."""
    import torch

    from mmgpt.runtime.manifest import is_export_folder

    if not str(path).startswith("hf://") and is_export_folder(path):
        from mmgpt.exported_model import ExportedModel

        _check_export_device(path, device)
        # OMP_NUM_THREADS (or the cores) sets torch's threads: the same setting then serves onnxruntime
        return ExportedModel(path, threads=torch.get_num_threads())
    return load_model(path, device).eval()


def _cpu_only(path: str) -> bool:
    """Whether `path` is a local model folder whose quantised layers run on the CPU only (mmgpt quantize int8)."""
    from mmgpt.compress import runs_on_cpu_only
    from mmgpt.model_folder import saved_model_folder

    config = saved_model_folder(Path(path).expanduser()) / "config.json"
    try:
        return config.is_file() and runs_on_cpu_only(json.loads(config.read_text()))
    except (OSError, ValueError):
        return False  # from_pretrained reports what is wrong with the folder


def _export_folder(model: Any) -> str | os.PathLike | None:
    """`model` (or $MMGPT_MODEL when None) if it is a folder written by `mmgpt export` (manifest.json), else None."""
    from mmgpt.runtime.manifest import is_export_folder

    model = os.environ.get("MMGPT_MODEL") if model is None else model
    exported = isinstance(model, (str, os.PathLike)) and not str(model).startswith("hf://") and is_export_folder(model)
    return model if exported else None


def _check_export_device(folder: str | os.PathLike, device: str | torch.device | None) -> None:
    """ValueError unless `device` is None or the cpu: where an exported folder runs."""
    if device is not None and str(device) != "cpu":
        raise ValueError(f"device {device}: an exported ONNX model ({folder}) runs on the cpu only")


def _decoding_given(generation_config: GenerationConfig | None, options: dict[str, Any]) -> dict[str, Any]:
    """The decoding options a call sets: its generation_config's set fields, then its keywords."""
    return {**(set_values(generation_config) if generation_config is not None else {}),
            **{k: v for k, v in options.items() if v is not None}}


def _beyond_greedy(given: dict[str, Any]) -> list[str]:
    """The options of `given` that mmgpt.runtime's greedy loop does not take alone (sampling, choices, ...)."""
    return sorted(set(given) - {"max_new_tokens", "bos_token_id", "eos_token_id", "pad_token_id"})


def _runtime_answers(folder: str | os.PathLike, texts: list[str], images: list[Any], batch_size: int,
                     given: dict[str, Any]) -> list[str]:
    """answer() greedy by mmgpt.runtime alone (no torch needed); `given` (_decoding_given) sets at most
    max_new_tokens."""
    from mmgpt.runtime import OnnxVLM

    key = str(Path(folder).expanduser().resolve())
    if key not in _EXPORTS:
        _EXPORTS[key] = OnnxVLM(folder)
    vlm = _EXPORTS[key] if isinstance(_EXPORTS[key], OnnxVLM) else _EXPORTS[key].vlm
    return vlm.answer(texts, images, batch_size=batch_size, max_new_tokens=given.get("max_new_tokens"))


def _export_model(folder: str | os.PathLike, beyond_greedy: list[str]) -> Any:
    """The mmgpt.exported_model.ExportedModel of an exported folder (kept for the next call); without torch None,
    or a ValueError naming `beyond_greedy`, the options only it decodes."""
    try:
        from mmgpt.exported_model import ExportedModel
    except ImportError:
        if beyond_greedy:
            raise ValueError(f"{', '.join(beyond_greedy)}: without torch an exported ONNX model ({folder}) decodes "
                             "greedily and takes only max_new_tokens; sampling and answer_choices need torch"
                             ) from None
        return None
    key = str(Path(folder).expanduser().resolve())
    if not isinstance(_EXPORTS.get(key), ExportedModel):
        _EXPORTS[key] = ExportedModel(folder)
    return _EXPORTS[key]


def check_text(text: Any, name: str) -> str:
    """A prompt that is a str of valid Unicode, else TypeError/ValueError naming it."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid Unicode: lone surrogate {text[e.start]!r} at index {e.start} "
                         f"(decode its bytes with errors='replace' or remove it)") from None
    return text


def _as_lists(text: Any, image: Any, images: Any = None) -> tuple[list[str], list[Any], bool]:
    """(texts, images, single) for one text and image, or equal-length lists/tuples of both.

    With `images` (and no `image`): one text and a list of its images, or a list of texts and a list of image
    lists; each text's images are then one list (the Processor's several-images form).
    """
    if images is not None:
        if image is not None:
            raise TypeError("give either image or images, not both")
        several = [images] if isinstance(text, str) else images
        if not isinstance(several, (list, tuple)) or not all(isinstance(s, (list, tuple)) and s for s in several):
            raise TypeError("images must be a non-empty list of images for one text, or a list of such lists for "
                            "a list of texts")
        image = list(several[0]) if isinstance(text, str) else [list(s) for s in several]
    elif image is None:
        raise TypeError("an image is required: give image=... (or images=[...] for several)")
    if isinstance(text, str):
        return [check_text(text, "text")], [image], True
    if not isinstance(text, (list, tuple)):
        raise TypeError(f"text must be a str or a list/tuple of str, got {type(text).__name__}")
    texts = [check_text(t, f"text[{i}]") for i, t in enumerate(text)]
    if not isinstance(image, (list, tuple)):
        raise TypeError(f"a list of texts needs a list of images of the same length, got {type(image).__name__}")
    if len(texts) != len(image):
        raise ValueError(f"got {len(texts)} texts but {len(image)} images")
    return texts, list(image), False


def _check_request(text: Any, image: Any, batch_size: int, seed: Any, options: dict[str, Any],
                   images: Any = None) -> tuple[list[str], list[Any], bool, int | None]:
    """The one validator of answer() and stream_answer(), run before the model loads: (texts, images, single, seed)."""
    texts, images, single = _as_lists(text, image, images)
    int_option("batch_size", batch_size, 1)
    check_decoding_options(options)
    return texts, images, single, check_seed(seed)


def _load_quietly(model: str | Path | MMGPT | None, device: str | torch.device | None) -> MMGPT:
    """load_model without a trace in torch's global RNG (building the parts draws initial weights from it)."""
    try:
        import torch
    except ImportError as e:  # the torch-free runtime install runs exported folders only
        raise OSError(f"{model if model is not None else 'the default model'}: not a folder written by `mmgpt "
                      f"export` (it has no manifest.json), and any other model needs torch, which is not installed "
                      f"({e})") from None

    with torch.random.fork_rng(devices=[]):
        return load_model(model, device)


def question_prompts(model: MMGPT, texts: Sequence[str]) -> list[str]:
    """Apply the model's VQA template; an empty prompt asks for a caption."""
    templates = PromptTemplates.from_config(model.config)
    return [question_prompt(text, templates) for text in texts]


def question_batch(model: MMGPT, texts: Sequence[str], images: Sequence[Any]) -> dict[str, torch.Tensor]:
    """The processor batch of questions (through the model's templates) about images, on the model's device."""
    from mmgpt.devices import model_device

    batch = model.processor(question_prompts(model, texts), images)
    device = model_device(model)
    return {k: v.to(device) for k, v in batch.items()}


def answer(
    text: str | Sequence[str],
    image: ImageInput | Sequence[ImageInput] | None = None,
    model: str | Path | MMGPT | None = None,
    *,
    images: Sequence[ImageInput] | Sequence[Sequence[ImageInput]] | None = None,
    generation_config: GenerationConfig | None = None,
    seed: int | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    **generate_kwargs: Any,
) -> str | list[str]:
    """Answer a question about an image (or lists of both, batched); an empty question asks for a caption.

    `image` may be a path, a PIL image, a numpy array or raw bytes. Several images for one question:
    `answer(text, images=[a, b])` (for a list of texts, a list of image lists); they come before the
    question in the prompt, in order (a literal "<image>" in the text is text). Decoding follows the model's
    generation_config (greedy by default), updated by `generation_config` and then by GenerationConfig
    fields given as keywords (mmgpt.decoding.DECODING_OPTIONS: `num_beams`, `temperature`/`top_k`/`top_p`
    with `seed` for sampling, ...). `max_new_tokens=0` answers "" (the images are still read and checked).
    `answer_choices=["yes", "no", ...]` answers with one of them only (greedy: the most probable; mmgpt.constrained).
    """
    texts, images, single, seed = _check_request(text, image, batch_size, seed, generate_kwargs, images)
    if (exported := _export_folder(model)) is not None:
        _check_export_device(exported, device)
        given = _decoding_given(generation_config, generate_kwargs)
        if not (beyond_greedy := _beyond_greedy(given)):
            answers = _runtime_answers(exported, texts, images, batch_size, given)
            return answers[0] if single else answers
        mm = _export_model(exported, beyond_greedy)  # sampling, choices: torch's logits processors on its graphs
    else:
        mm = _load_quietly(model, device)
    # torch: after the load, which says so when it is missing
    from mmgpt.devices import model_device
    from mmgpt.sampling import seeded_decoding

    config, _ = resolve_generation_config(mm.generation_config, generation_config, **generate_kwargs)
    answers: list[str] = []
    with seeded_decoding(config, seed, model_device(mm)) as (decoding, extra):
        for start in range(0, len(texts), batch_size):
            batch = question_batch(mm, texts[start : start + batch_size], images[start : start + batch_size])
            tokens = mm.generate_batch(batch, generation_config=decoding, **extra)
            answers.extend(mm.processor.decode(tokens))
    return answers[0] if single else answers


def stream_answer(
    text: str,
    image: ImageInput | None = None,
    model: str | Path | MMGPT | None = None,
    *,
    images: Sequence[ImageInput] | None = None,
    generation_config: GenerationConfig | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    **generate_kwargs: Any,
) -> Iterator[str]:
    """Like answer() for one question, but yields the answer's text piece by piece as it is generated.

    The arguments are checked, the model loaded and the image read when it is called, not on the first piece.
    """
    if not isinstance(text, str):
        raise TypeError(f"stream_answer takes one text (a str) and one image, got text of type {type(text).__name__}")
    texts, images, _, seed = _check_request(text, image, 1, seed, generate_kwargs, images)
    if (exported := _export_folder(model)) is not None:
        _check_export_device(exported, device)
        given = _decoding_given(generation_config, generate_kwargs)
        mm = _export_model(exported, _beyond_greedy(given))
        if mm is None:  # no torch: the runtime decodes the whole answer, which comes as one piece
            piece = _runtime_answers(exported, texts, images, 1, given)[0]
            return iter([piece] if piece else [])
    else:
        mm = _load_quietly(model, device)
    # torch: after the load, which says so when it is missing
    from mmgpt.constrained import ANSWER_CHOICES
    from mmgpt.sampling import seeded_decoding

    config, _ = resolve_generation_config(mm.generation_config, generation_config, **generate_kwargs)
    if (config.num_beams or 1) > 1:
        raise ValueError(f"num_beams must be 1 for streaming (greedy or sampled decoding), got {config.num_beams}")
    batch = question_batch(mm, texts, images)
    if getattr(config, ANSWER_CHOICES, None):  # a search over the choices ends all at once: one piece
        with seeded_decoding(config, seed, batch["input_ids"].device) as (decoding, extra):
            tokens = mm.generate_batch(batch, generation_config=decoding, **extra)
        return iter(mm.processor.decode(tokens))
    if config.max_new_tokens == 0:
        return iter(())
    # generate checks this too, but in the streaming thread: here it is raised at the call
    # counted from the request: with tiling one image is several views (pixel_values (1, V, 3, H, W))
    images_asked = len(images[0]) if isinstance(images[0], (list, tuple)) else 1
    check_answer_length(config.max_new_tokens, mm.prefix_length(int(batch["attention_mask"].sum()), images_asked),
                        mm.max_positions)
    return _stream(mm, batch, config, seed)


def _stream(mm: MMGPT, batch: dict[str, torch.Tensor], config: GenerationConfig, seed: int | None) -> Iterator[str]:
    """Run generate in a thread and yield the streamer's pieces; its errors are re-raised here."""
    from transformers import TextIteratorStreamer

    from mmgpt.sampling import seeded_decoding

    streamer = TextIteratorStreamer(mm.processor.tokenizer, skip_prompt=False, skip_special_tokens=True)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with seeded_decoding(config, seed, batch["input_ids"].device) as (decoding, extra):
                mm.generate_batch(batch, streamer=streamer, generation_config=decoding, **extra)
        except BaseException as e:  # re-raised in the caller's thread
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    # the pieces join to answer()'s text, which is stripped: whitespace is held back until text follows it
    started, held = False, ""
    for piece in streamer:
        if not started:
            piece = piece.lstrip()
            started = bool(piece)
        text = held + piece
        body = text.rstrip()
        held = text[len(body):]
        if body:
            yield body
    thread.join()
    if errors:
        raise errors[0]
