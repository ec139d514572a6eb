"""Fusion modules g: F, F_mask = g(T, T_mask, I); the interface a new fusion implements is in mmgpt.fusion.base."""
from __future__ import annotations

# importing the modules fills the registry
from mmgpt.fusion import (  # noqa: F401
    block,
    concat,
    cross_attention,
    film,
    gated_cross_attention,
    mfb,
    mlb,
    mutan,
    product,
    weighted_sum,
)
from mmgpt.fusion.base import FUSIONS, Fusion, build_fusion, register_fusion

__all__ = ["FUSIONS", "Fusion", "build_fusion", "register_fusion"]
