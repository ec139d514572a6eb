"""Where one dataset lives on disk and how much it counts in a mixture: the spec every reader takes."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from mmgpt.data.augment import check_augmentations
from mmgpt.data.formats import FORMATS
from mmgpt.data.hf import check_columns


@dataclass
class DatasetSpec:
    """Where one dataset lives on disk and how much it counts in a mixture."""

    format: str
    path: str = ""
    images: str = ""
    annotations: str = ""
    split: str = "train"
    weight: float = 1.0
    max_examples: int = 0
    name: str = ""
    # training-time augmentations of this dataset's images (mmgpt.data.augment), e.g. [hflip, rot90]
    augment: list[str] = field(default_factory=list)
    # format hf (mmgpt.data.hf): the dataset's config name on the hub, which columns hold what, whether to
    # stream it (read on the fly, never whole) and the shuffle buffer of a stream (0 = in stored order)
    subset: str = ""
    columns: dict = field(default_factory=dict)
    streaming: bool = False
    shuffle_buffer: int = 1000

    def __post_init__(self) -> None:
        self.augment = check_augmentations(self.augment, f"dataset {self.label!r} field 'augment'")
        if self.format not in FORMATS:
            raise ValueError(f"dataset field 'format': unknown format {self.format!r}; "
                             f"available: {', '.join(sorted(FORMATS))}")
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight) or self.weight < 0:
            raise ValueError(f"dataset {self.label!r} field 'weight' must be a finite number >= 0, got {self.weight!r}")
        if not isinstance(self.max_examples, int) or self.max_examples < 0:
            raise ValueError(f"dataset {self.label!r} field 'max_examples' must be an int >= 0 (0 = all), "
                             f"got {self.max_examples!r}")
        if not self.split:
            raise ValueError(f"dataset {self.label!r} field 'split' must not be empty")
        if not isinstance(self.shuffle_buffer, int) or self.shuffle_buffer < 0:
            raise ValueError(f"dataset {self.label!r} field 'shuffle_buffer' must be an int >= 0 (0 = stored order), "
                             f"got {self.shuffle_buffer!r}")
        if self.format != "hf" and (self.subset or self.columns or self.streaming):
            raise ValueError(f"dataset {self.label!r}: fields 'subset', 'columns' and 'streaming' are for format hf, "
                             f"not {self.format}")
        if self.format == "hf":
            check_columns(self.columns, f"dataset {self.label!r} field 'columns'")

    @property
    def label(self) -> str:
        """Name used in logs, errors and Example.source."""
        return self.name or self.format
