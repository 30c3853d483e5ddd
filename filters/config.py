"""``FilterConfig``: the filter stage's run settings plus one section per rule of the table.

The run settings are declared here; the rule sections (``format:``, ``length:``, ``dedup:``...) are
added from :data:`filters.registry.RULES`, in run order, so a new rule brings its section with it.
Every threshold is validated at load (the sections' ``Field`` bounds): a negative length limit or a
ratio outside [0, 1] is a config error naming the key, not a run that rejects everything.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, create_model

from pipeline.config import StageConfig

from filters.registry import RULES

__all__ = ["FilterConfig", "FilterSettings"]


class FilterSettings(StageConfig):
    """How the filter runs (inputs, output, workers, bad lines, checkpoints), without the rules."""

    inputs: list[str] = Field(default_factory=list, description="generation shards: files or folders (JSONL/JSON/Parquet)")
    output_dir: str = Field("runs/filtered", description="output folder")
    workers: int = Field(0, ge=0, description="worker processes for the per-record rules (0 = all cores, 1 = in-process)")
    chunk_size: int = Field(64, ge=1, description="records per task sent to a worker")
    on_bad_line: Literal["error", "quarantine"] = Field("error", description="malformed line: stop (error) or set aside in bad_lines.jsonl")
    checkpoint_every: int = Field(20000, ge=1, description="records between resume checkpoints")
    overwrite: bool = Field(False, description="replace a finished or different run in output_dir")
    write_details: bool = Field(True, description="add reject_details (measured value vs threshold) to rejected records")


def _section_field(i: int, cls: Any) -> tuple[Any, Any]:
    codes = ", ".join(f"'{r}'" for r in cls.reasons)
    label = "reasons" if len(cls.reasons) > 1 else "reason"
    return cls.Config, Field(default_factory=cls.Config, description=f"rule {i} ({cls.__name__}), {label} {codes}")


FilterConfig = create_model(
    "FilterConfig", __base__=FilterSettings, __module__=__name__,
    __doc__="The ``distill filter`` config: run settings plus one section per rule (filters/registry.py).",
    **{cls.key: _section_field(i, cls) for i, cls in enumerate(RULES, start=1)})
