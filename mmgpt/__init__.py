"""mmgpt: small vision-language generation models (text + image in, text out).

    from mmgpt import answer
    answer("What color is the shape?", "image.png")
"""
from __future__ import annotations

import logging
from typing import Any

# transformers imports torchao when it is installed, and torchao registers enums with torch's pytree, which
# torch >= 2.14 warns about at import: a note about torchao's code, printed by every command, so filtered
logging.getLogger("torch.utils._pytree").addFilter(lambda record: "is an Enum subclass" not in record.getMessage())

__version__ = "0.1.0"
__all__ = ["MMGPT", "ModelConfig", "ModelLoadError", "Processor", "answer", "stream_answer", "load_model"]

_LAZY = {
    "MMGPT": "mmgpt.model",
    "ModelLoadError": "mmgpt.model_folder",
    "ModelConfig": "mmgpt.config",
    "Processor": "mmgpt.processor",
    "answer": "mmgpt.inference",
    "stream_answer": "mmgpt.inference",
    "load_model": "mmgpt.inference",
}


def __getattr__(name: str) -> Any:
    # lazy, so that `import mmgpt.config` does not pull in torch and transformers
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmgpt' has no attribute {name!r}")
