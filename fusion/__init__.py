"""Fusion modules g: F, F_mask = g(T, T_mask, I); the interface a new fusion implements is in mmgpt.fusion.base."""
from __future__ import annotations

# importing the modules fills the registry
from mmgpt.fusion import concat, cross_attention, product, weighted_sum  # noqa: E402,F401
from mmgpt.fusion.base import FUSIONS, Fusion, build_fusion, register_fusion

__all__ = ["FUSIONS", "Fusion", "build_fusion", "register_fusion"]
