"""Image-encoder outputs kept for images sent again (a multi-turn chat re-sends its image every turn).

An image's key is the SHA-256 of exactly what the encoder reads: the preprocessed pixel tensor's dtype,
shape and every byte. Equal keys therefore mean equal encoder inputs; the full digest is kept (a
truncated one would let two images share an answer). The cache is bounded in bytes and drops the
least recently used outputs first; only the worker thread touches it.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

from mmgpt.serve.metrics import Metrics


def image_key(pixels: torch.Tensor) -> str:
    """The SHA-256 hex digest of a preprocessed image (3, H, W): its dtype, shape and bytes."""
    digest = hashlib.sha256(f"{pixels.dtype}{tuple(pixels.shape)}".encode())
    digest.update(memoryview(pixels.detach().cpu().contiguous().numpy()).cast("B"))
    return digest.hexdigest()


class ImageCache:
    """Image-encoder outputs (Li, D) by image_key, at most `max_bytes` of them, least recently used dropped first."""

    def __init__(self, max_bytes: int, metrics: Metrics) -> None:
        self.max_bytes, self.metrics = max_bytes, metrics
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.bytes = 0

    def get(self, key: str) -> torch.Tensor | None:
        """The output stored for `key` (now the most recently used), or None; counted as a hit or a miss."""
        features = self._entries.get(key)
        if features is None:
            self.metrics.image_cache_misses.inc()
            return None
        self._entries.move_to_end(key)
        self.metrics.image_cache_hits.inc()
        return features

    def put(self, key: str, features: torch.Tensor) -> None:
        """Keep `features` (a copy of its own, so a batch's tensor is not held) unless it alone is over the bound."""
        size = features.numel() * features.element_size()
        if size > self.max_bytes or key in self._entries:
            return
        while self.bytes + size > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self.bytes -= dropped.numel() * dropped.element_size()
        self._entries[key] = features.clone()
        self.bytes += size
        self.metrics.image_cache_bytes.set(self.bytes)

    def __len__(self) -> int:
        return len(self._entries)
