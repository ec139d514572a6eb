"""Answer questions from an exported folder (`mmgpt export`) with numpy, onnx, onnxruntime, tokenizers and pillow.

    from mmgpt.runtime import OnnxVLM
    vlm = OnnxVLM("exported")
    vlm.answer("what shape is in the image?", "image.png")

Nothing here imports torch or transformers: prompts come from mmgpt.prompts, token limits from
mmgpt.truncation, image loading from mmgpt.images, the image transform is timm's eval transform redone
in numpy (mmgpt.runtime.image), tiles are cut by mmgpt.images.tile_views as the Processor cuts them, and
decoding is greedy with the KV cache kept as numpy arrays. `generate` also takes a caller's token picker and
row stopper (mmgpt.exported_model passes torch's seeded sampler, answer choices and stop strings through them),
and `choice_log_probs` scores fixed answers.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from mmgpt.config import PromptTemplates
from mmgpt.decoding import check_answer_length, int_option, position_ids
from mmgpt.images import ImageInput, load_image, tile_views
from mmgpt.prompts import question_prompt
from mmgpt.runtime.image import ImageTransform
from mmgpt.runtime.manifest import (
    DECODER_GRAPH,
    EMBED_GRAPH,
    PREFIX_GRAPH,
    ExportFolderError,
    is_export_folder,
    read_manifest,
    saved_export_folder,
)
from mmgpt.truncation import tail_token_ids

logger = logging.getLogger(__name__)

# the oldest onnxruntime that runs a fused decoder graph (mmgpt.export.graphs.FusedDecoderGraph; 1.22 refuses opset 23)
FUSED_DECODER_RUNTIME = "1.23"

ChooseTokens = Callable[[np.ndarray, np.ndarray], np.ndarray]
StopRows = Callable[[np.ndarray], np.ndarray]

__all__ = ["ExportFolderError", "OnnxVLM", "is_export_folder"]


def clean_up_tokenization(text: str) -> str:
    """transformers' clean_up_tokenization: no space before punctuation and English contractions."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


class OnnxVLM:
    """An exported mmgpt model: prefix, embedding and decoder graphs in onnxruntime sessions."""

    def __init__(self, folder: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",),
                 threads: int | None = None) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        self.folder = saved_export_folder(folder)
        self.manifest = manifest = read_manifest(self.folder)
        try:
            self.tokenizer = Tokenizer.from_file(str(self.folder / manifest["files"]["tokenizer"]))
            text_file = manifest["files"].get("text_tokenizer")
            self.text_tokenizer = Tokenizer.from_file(str(self.folder / text_file)) if text_file else None
            self.image_transform = ImageTransform.load((self.folder / manifest["files"]["image_transform"]).parent)
        except (OSError, ValueError, KeyError) as e:
            raise ExportFolderError(f"cannot load the export in {self.folder}: {' '.join(str(e).split())}") from e
        # the tokenizers library raises a bare Exception for a damaged tokenizer.json
        except Exception as e:
            raise ExportFolderError(f"the tokenizer in {self.folder} cannot be read: {e}") from e
        self.tokens = manifest["tokens"]
        self.limits = manifest["limits"]
        self.generation = manifest["generation"]
        self.templates = PromptTemplates.from_config(manifest["prompts"])
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.prefix_session, self.embed_session, self.decoder_session = (
                onnxruntime.InferenceSession(str(self.folder / name), options, providers=list(providers))
                for name in (PREFIX_GRAPH, EMBED_GRAPH, DECODER_GRAPH)
            )
        except Exception as e:  # onnxruntime's errors are its own classes, not OSError/ValueError
            hint, decoder = "", manifest["graphs"].get("decoder", {})
            if decoder.get("fused"):  # written with its "opset", by the same exports
                hint = (f" (its decoder uses opset {decoder['opset']} ops, which "
                        f"onnxruntime {FUSED_DECODER_RUNTIME} or newer runs, this is {onnxruntime.__version__}; "
                        "`mmgpt export --no-fused-decoder` writes a decoder that older versions run)")
            raise ExportFolderError(f"onnxruntime cannot load the graphs in {self.folder}{hint}: {e}") from e
        decoder = manifest["decoder"]
        self.num_layers, self.kv_heads, self.head_dim = (decoder["num_layers"], decoder["num_key_value_heads"],
                                                         decoder["head_dim"])
        self.past_names = [f"past_{kind}_{i}" for i in range(self.num_layers) for kind in ("key", "value")]
        self.max_positions = decoder.get("max_positions")  # absent from older exports: not checked there
        # several images per prompt or tiling: every prompt's views padded to `entries` (the graph's fixed K)
        images = manifest.get("images") or {}
        self.max_images = int(images.get("max_images", 1))
        self.tiling = tuple(images.get("tiling", (0, 0)))
        self.entries = int(images.get("entries", 1)) if images else None

    # ---- preprocessing, as mmgpt.processor.Processor does it ----
    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of one templated prompt for the text encoder, truncated to the end as the Processor does."""
        if self.text_tokenizer is not None:
            encoder = self.text_tokenizer

            def encode(text: str) -> list[int]:
                return encoder.encode(text, add_special_tokens=True).ids
        else:
            bos = self.tokens["bos_token_id"]

            def encode(text: str) -> list[int]:
                return [bos] + self.tokenizer.encode(text, add_special_tokens=False).ids
        ids, total, _ = tail_token_ids(encode, prompt, self.limits["max_prompt_length"])
        if total > self.limits["max_prompt_length"]:
            logger.warning("prompt of %d characters truncated to the text encoder's limit of %d tokens",
                           len(prompt), self.limits["max_prompt_length"])
        return ids

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """Prompts -> input_ids, attention_mask (B, Lt) int64, right-padded."""
        sequences = [self.prompt_ids(p) for p in prompts]
        length = max(1, max(len(s) for s in sequences))
        input_ids = np.full((len(sequences), length), self.tokens["text_pad_token_id"], dtype=np.int64)
        attention_mask = np.zeros((len(sequences), length), dtype=np.int64)
        for i, ids in enumerate(sequences):
            input_ids[i, : len(ids)] = ids
            attention_mask[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def encode_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """Images (path, bytes, PIL, numpy) -> pixel_values (B, 3, H, W) float32."""
        return np.stack([self.image_transform(load_image(image, max_pixels=self.limits["max_image_pixels"]))
                         for image in images]).astype(np.float32)

    def image_views(self, image: ImageInput) -> list[np.ndarray]:
        """An image's views (3, H, W) as Processor.image_tensor makes them: the whole image, then with tiling its
        tiles (mmgpt.images.tile_views) row by row, each through the image transform."""
        picture = load_image(image, max_pixels=self.limits["max_image_pixels"])
        rows, cols = self.tiling
        pictures = tile_views(picture, (self.image_transform.height, self.image_transform.width), rows, cols
                              ) if rows * cols else [picture]
        return [self.image_transform(view) for view in pictures]

    def encode_image_sets(self, image_sets: Sequence[Sequence[ImageInput]]) -> dict[str, np.ndarray]:
        """Lists of images, one per prompt, all before the prompt's text -> pixel_values (B, K, 3, H, W),
        image_mask (B, K), image_slots (B, K), K the export's fixed count (max_images x views), padding zeros."""
        for i, images in enumerate(image_sets):
            if not images:
                raise ValueError(f"example {i} has an empty list of images")
            if len(images) > self.max_images:
                raise ValueError(f"a prompt has {len(images)} images, more than this model's "
                                 f"model.max_images={self.max_images}")
        return self.image_set_inputs([[view for image in images for view in self.image_views(image)]
                                      for images in image_sets])

    def image_set_inputs(self, rows: Sequence[Sequence[np.ndarray]]) -> dict[str, np.ndarray]:
        """Each prompt's views (3, H, W), its images' in order -> pixel_values (B, K, 3, H, W), image_mask and
        image_slots (B, K): every row padded to the export's K entries with masked zeros."""
        pixel_values = np.zeros((len(rows), self.entries, 3, self.image_transform.height,
                                 self.image_transform.width), dtype=np.float32)
        image_mask = np.zeros((len(rows), self.entries), dtype=np.int64)
        for i, row in enumerate(rows):
            pixel_values[i, : len(row)], image_mask[i, : len(row)] = row, 1
        return {"pixel_values": pixel_values, "image_mask": image_mask,
                "image_slots": np.zeros_like(image_mask)}

    def prompts(self, texts: Sequence[str]) -> list[str]:
        """The model's VQA template applied to each question; an empty one asks for a caption."""
        return [question_prompt(text, self.templates) for text in texts]

    # ---- the graphs ----
    def prefix(self, input_ids: np.ndarray, attention_mask: np.ndarray, pixel_values: np.ndarray,
               image_mask: np.ndarray | None = None, image_slots: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """The prefix graph: -> prefix_embeds (B, Lf, width), prefix_mask (B, Lf), left-padded.

        An export of several images or tiles takes encode_image_sets' pixel_values, image_mask and image_slots.
        """
        sets = {} if image_mask is None else {"image_mask": image_mask, "image_slots": image_slots}
        embeds, mask = self.prefix_session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask,
                                                      "pixel_values": pixel_values, **sets})
        return embeds, mask

    def embed(self, input_ids: np.ndarray) -> np.ndarray:
        """The generator's token embeddings: (B, L) -> (B, L, width)."""
        return self.embed_session.run(None, {"input_ids": input_ids.astype(np.int64)})[0]

    def empty_past(self, batch: int) -> list[np.ndarray]:
        """A KV cache of length 0 for `batch` rows: the first decoder step."""
        return [np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=np.float32) for _ in self.past_names]

    def decode_step(self, inputs_embeds: np.ndarray, attention_mask: np.ndarray, past: list[np.ndarray]
                    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One decoder step: -> next-token logits (B, vocab) and the grown cache."""
        length = inputs_embeds.shape[1]
        outputs = self.decoder_session.run(None, {"inputs_embeds": inputs_embeds.astype(np.float32),
                                                  "attention_mask": attention_mask.astype(np.int64),
                                                  "position_ids": position_ids(attention_mask)[:, -length:]
                                                  .astype(np.int64),
                                                  **dict(zip(self.past_names, past))})
        return outputs[0][:, -1], outputs[1:]

    def _first_step(self, input_ids: np.ndarray, attention_mask: np.ndarray, pixel_values: np.ndarray,
                    limit: int, image_mask: np.ndarray | None, image_slots: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """The prefix and bos through the decoder, `limit` answer tokens checked against the positions
        -> (logits of the first answer token (B, vocab), the attention mask so far, the cache)."""
        prefix, prefix_mask = self.prefix(input_ids, attention_mask, pixel_values, image_mask, image_slots)
        check_answer_length(limit, int(prefix_mask.sum(1).max()), self.max_positions)
        batch = input_ids.shape[0]
        bos = np.full((batch, 1), self.tokens["bos_token_id"], dtype=np.int64)
        mask = np.concatenate([prefix_mask.astype(np.int64), np.ones((batch, 1), dtype=np.int64)], axis=1)
        logits, past = self.decode_step(np.concatenate([prefix, self.embed(bos)], axis=1), mask,
                                        self.empty_past(batch))
        return logits, mask, past

    def generate(self, input_ids: np.ndarray, attention_mask: np.ndarray, pixel_values: np.ndarray,
                 max_new_tokens: int | None = None, image_mask: np.ndarray | None = None,
                 image_slots: np.ndarray | None = None, choose: ChooseTokens | None = None,
                 stop: StopRows | None = None) -> np.ndarray:
        """Greedy decoding with the KV cache -> new token ids (B, N), pad after eos, as MMGPT.generate.

        `choose(tokens so far (B, t), logits (B, vocab)) -> (B,)` picks each step's tokens instead of the
        argmax (a sampler, a constraint); `stop(tokens so far (B, t)) -> (B,) bool` ends rows besides eos.
        """
        limit = self.generation["max_new_tokens"] if max_new_tokens is None else max_new_tokens
        batch = input_ids.shape[0]
        if limit == 0:
            return np.zeros((batch, 0), dtype=np.int64)
        logits, mask, past = self._first_step(input_ids, attention_mask, pixel_values, limit, image_mask,
                                              image_slots)
        eos = np.asarray(self.generation["eos_token_id"], dtype=np.int64)
        pad = self.generation["pad_token_id"]
        finished = np.zeros(batch, dtype=bool)
        tokens = np.zeros((batch, 0), dtype=np.int64)
        for step in range(limit):
            if step:
                logits, past = self.decode_step(self.embed(tokens[:, -1:]), mask, past)
            picked = logits.argmax(axis=-1) if choose is None else np.asarray(choose(tokens, logits))
            tokens = np.concatenate([tokens, np.where(finished, pad, picked).astype(np.int64)[:, None]], axis=1)
            finished |= np.isin(tokens[:, -1], eos)
            if stop is not None:
                finished |= np.asarray(stop(tokens), dtype=bool)
            if finished.all():
                break
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        return tokens

    def choice_log_probs(self, input_ids: np.ndarray, attention_mask: np.ndarray, pixel_values: np.ndarray,
                         choices: Sequence[Sequence[int]], image_mask: np.ndarray | None = None,
                         image_slots: np.ndarray | None = None) -> np.ndarray:
        """The log-probability of each answer (token ids, eos included) after each prompt -> (B, C): the score
        an exact search over the answers ranks them by (a beam search with one beam per answer prefix)."""
        width = max(len(ids) for ids in choices)
        logits, mask, past = self._first_step(input_ids, attention_mask, pixel_values, width, image_mask,
                                              image_slots)
        batch, count = input_ids.shape[0], len(choices)
        targets = np.zeros((count, width), dtype=np.int64)
        valid = np.zeros((count, width), dtype=bool)
        for c, ids in enumerate(choices):
            targets[c, : len(ids)], valid[c, : len(ids)] = ids, True
        # row b * C + c: answer c after prompt b, its tokens fed one step at a time on the prompt's cache
        targets, valid = np.tile(targets, (batch, 1)), np.tile(valid, (batch, 1))
        logits, mask = np.repeat(logits, count, axis=0), np.repeat(mask, count, axis=0)
        past = [np.repeat(p, count, axis=0) for p in past]
        total = np.zeros(batch * count)
        for step in range(width):
            if step:
                mask = np.concatenate([mask, np.ones((len(mask), 1), dtype=np.int64)], axis=1)
                logits, past = self.decode_step(self.embed(targets[:, step - 1 : step]), mask, past)
            scores = logits.astype(np.float64)
            top = scores.max(-1, keepdims=True)
            log_probs = scores - top - np.log(np.exp(scores - top).sum(-1, keepdims=True))
            total += np.where(valid[:, step], log_probs[np.arange(len(total)), targets[:, step]], 0.0)
        return total.reshape(batch, count)

    def decode(self, token_ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
        """Generated ids (B, N), or lists of them, -> answer strings, stopping at eos, as Processor.decode."""
        eos = self.tokens["eos_token_id"]
        texts = []
        for ids in token_ids.tolist() if isinstance(token_ids, np.ndarray) else map(list, token_ids):
            if eos in ids:
                ids = ids[: ids.index(eos)]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if self.tokens.get("clean_up_tokenization_spaces"):
                text = clean_up_tokenization(text)
            texts.append(text.strip())
        return texts

    def answer(self, text: str | Sequence[str], image: ImageInput | Sequence[ImageInput], *,
               batch_size: int = 64, max_new_tokens: int | None = None) -> str | list[str]:
        """Answer a question about an image (or equal-length lists of both, batched); "" asks for a caption.

        An export of several images per prompt also takes, per text, a list of its images (before the text).
        """
        single = isinstance(text, str)
        texts, images = ([text], [image]) if single else (list(text), list(image))
        if self.entries is None:
            # a list of one image is that image, as the eager model takes it
            images = [i[0] if isinstance(i, (list, tuple)) and len(i) == 1 else i for i in images]
            if any(isinstance(i, (list, tuple)) for i in images):
                counts = sorted({len(i) for i in images if isinstance(i, (list, tuple))})
                raise ValueError(f"{self.folder}: this export takes one image per prompt, got a prompt with "
                                 f"{' or '.join(map(str, counts))} images (it was exported from a model with "
                                 "model.max_images 1)")
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("text must be a str or a list of str")
        if len(texts) != len(images):
            raise ValueError(f"got {len(texts)} texts but {len(images)} images")
        int_option("batch_size", batch_size, 1)
        int_option("max_new_tokens", max_new_tokens, 0, none="the export's generation config")
        answers: list[str] = []
        for start in range(0, len(texts), batch_size):
            batch = self.encode_prompts(self.prompts(texts[start : start + batch_size]))
            chunk = images[start : start + batch_size]
            if self.entries is None:
                pixels = {"pixel_values": self.encode_images(chunk)}
            else:
                pixels = self.encode_image_sets([list(i) if isinstance(i, (list, tuple)) else [i] for i in chunk])
            tokens = self.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens,
                                   **pixels)
            answers.extend(self.decode(tokens))
        return answers[0] if single else answers

    def __repr__(self) -> str:
        return f"OnnxVLM({str(self.folder)!r})"

