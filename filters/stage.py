"""``distill filter``: R1-style rule filters over generated traces -> kept / rejected / report.

    distill filter --config configs/filter/r1.yaml --inputs runs/gen --output runs/filtered

Output folder: ``kept.jsonl`` (records unchanged), ``rejected.jsonl`` (each record plus
``reject_reasons``: every rule it failed, and ``reject_details``), ``bad_lines.jsonl`` (with
``on_bad_line: quarantine``), ``report.json``, ``report.md`` and ``funnel.png``. Work in progress
lives in ``<output>/.partial/`` with a checkpoint; the finished files appear only at the end and
``report.json`` is written last, so a folder with a ``report.json`` is a complete run. Running the
same command again after a kill resumes from the last checkpoint.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.cliutil import add_stage_parser, config_from_args
from pipeline.config import StageConfig

from filters.answer import AnswerConfig
from filters.code_blocks import CodeBlockConfig
from filters.decontam import DecontamConfig
from filters.dedup import DedupConfig
from filters.format import FormatConfig
from filters.language import LanguageConfig
from filters.length import LengthConfig
from filters.paragraphs import ParagraphConfig
from filters.redundancy import RedundancyConfig
from filters.truncation import TruncationConfig

__all__ = ["FilterConfig", "run", "register"]


class FilterConfig(StageConfig):
    inputs: list[str] = Field(default_factory=list, description="generation shards: files or folders (JSONL/JSON/Parquet)")
    output_dir: str = Field("runs/filtered", description="output folder")
    workers: int = Field(0, description="worker processes for the per-record rules (0 = all cores, 1 = in-process)")
    chunk_size: int = Field(64, ge=1, description="records per task sent to a worker")
    on_bad_line: Literal["error", "quarantine"] = Field("error", description="malformed line: stop (error) or set aside in bad_lines.jsonl")
    checkpoint_every: int = Field(20000, ge=1, description="records between resume checkpoints")
    overwrite: bool = Field(False, description="replace a finished or different run in output_dir")
    write_details: bool = Field(True, description="add reject_details (measured value vs threshold) to rejected records")
    format: FormatConfig = Field(default_factory=FormatConfig, description="rule 1, reason 'format'")
    truncation: TruncationConfig = Field(default_factory=TruncationConfig, description="rule 2, reason 'truncated'")
    language: LanguageConfig = Field(default_factory=LanguageConfig, description="rule 3, reason 'mixed_language'")
    redundancy: RedundancyConfig = Field(default_factory=RedundancyConfig, description="rule 4, reason 'redundancy'")
    paragraphs: ParagraphConfig = Field(default_factory=ParagraphConfig, description="rule 5, reason 'long_paragraph'")
    code_blocks: CodeBlockConfig = Field(default_factory=CodeBlockConfig, description="rule 6, reason 'code_block'")
    length: LengthConfig = Field(default_factory=LengthConfig, description="rule 7, reason 'length'")
    answer: AnswerConfig = Field(default_factory=AnswerConfig, description="rule 8, reason 'wrong_answer'")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="rule 9, reasons 'duplicate', 'near_duplicate', 'prompt_cap'")
    decontam: DecontamConfig = Field(default_factory=DecontamConfig, description="rule 10, reason 'contaminated'")


FLAGS = {
    "--inputs": ("inputs", "list", "generation shards (files or folders)"),
    "--output": ("output_dir", str, "output folder"),
    "--workers": ("workers", int, "worker processes (0 = all cores)"),
    "--on-bad-line": ("on_bad_line", str, "error | quarantine"),
    "--overwrite": ("overwrite", "store_true", "replace an existing run in the output folder"),
}


def run(cfg: FilterConfig) -> dict:
    """Filter ``cfg.inputs`` into ``cfg.output_dir``; returns the report (also in report.json)."""
    from filters.runner import run_filter

    return run_filter(cfg)


def _main(args) -> int:
    from filters.report import print_summary

    report = run(config_from_args(FilterConfig, args, FLAGS))
    print_summary(report)
    return 0


def register(sub) -> None:
    p = add_stage_parser(sub, "filter", FilterConfig,
                         "Filter teacher traces with R1-style rules (format, truncation, language mixing, "
                         "redundancy, long paragraphs, code, length, answer correctness, dedup, decontamination)",
                         FLAGS)
    p.set_defaults(func=_main)
