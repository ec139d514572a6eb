"""Fusion modules g: F, F_mask = g(T, T_mask, I).

Shapes: T (batch, text_len, d_text), T_mask (batch, text_len), I (batch, image_len, d_image)
-> F (batch, fused_len, dim), F_mask (batch, fused_len). Adding a fusion is one file with
a `@register_fusion("name")` class and one import line below.
"""
from __future__ import annotations

from mmgpt.fusion.base import FUSIONS, Fusion, build_fusion, register_fusion

# importing the modules fills the registry
from mmgpt.fusion import concat, cross_attention, product, weighted_sum  # noqa: E402,F401

__all__ = ["FUSIONS", "Fusion", "build_fusion", "register_fusion"]
