"""`mmgpt serve --model EXPORTED`: an `mmgpt export` folder (fp32 or --int8) served with no extra flag, through
mmgpt.exported_model.ExportedModel; the worker hands each row's images to the export's prefix graph as pixels."""
from __future__ import annotations

from typing import Any

from mmgpt.serve.worker import Job, Worker, _Row


class ExportWorker(Worker):
    """The server's worker around an ExportedModel: each row's images go to the prefix graph as pixels."""

    def _encode_images(self, jobs: list[Job], rows: list[_Row]) -> dict[str, Any]:
        return self.model.processor.pixel_inputs([row.job.images for row in rows])  # type: ignore[attr-defined]
