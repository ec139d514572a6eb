"""Model compression for deployment: int8 quantisation (quantize.py) and structured pruning (prune.py).

A compressed model is a normal model folder; its config.json records how it was made under "compression".
"""
from __future__ import annotations

COMPRESSION_KEY = "compression"
