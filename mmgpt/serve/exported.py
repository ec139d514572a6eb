"""`mmgpt serve --model EXPORTED`: an `mmgpt export` folder (fp32 or --int8) served with no extra flag, through
mmgpt.exported_model.ExportedModel; the worker hands each row's images to the export's prefix graph as pixels."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmgpt.exported_model import ExportedModel
from mmgpt.runtime.manifest import is_export_folder
from mmgpt.serve.metrics import Metrics
from mmgpt.serve.worker import Job, Worker, _Row


class ExportWorker(Worker):
    """The server's worker around an ExportedModel: each row's images go to the prefix graph as pixels."""

    def __init__(self, model: ExportedModel, metrics: Metrics, *args: Any, **kwargs: Any) -> None:
        super().__init__(model, metrics, *args, **kwargs)  # type: ignore[arg-type]

    def _model_device(self) -> torch.device:
        return torch.device("cpu")

    def _encode_images(self, jobs: list[Job], rows: list[_Row]) -> dict[str, Any]:
        return self.model.pixel_inputs([row.job.images for row in rows])  # type: ignore[attr-defined]


def serving_model(path: str | Path, device: str | None) -> Any:
    """The model `mmgpt serve --model PATH` serves: an ExportedModel for an `mmgpt export` folder (on the CPU),
    else the MMGPT that load_model reads."""
    from mmgpt.inference import load_model

    if not str(path).startswith("hf://") and is_export_folder(path):
        if device is not None and device != "cpu":
            raise ValueError(f"--device {device}: an exported ONNX model ({path}) runs on the cpu only")
        # as many onnxruntime threads as torch uses (OMP_NUM_THREADS, else the cores): one setting for both
        return ExportedModel(path, threads=torch.get_num_threads())
    return load_model(path, device).eval()
