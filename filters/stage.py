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

from pipeline.cliutil import add_stage_parser, config_from_args

from filters.config import FilterConfig

__all__ = ["FilterConfig", "run", "register"]


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
    from filters.registry import RULES

    p = add_stage_parser(sub, "filter", FilterConfig,
                         f"Filter teacher traces with R1-style rules ({', '.join(cls.key for cls in RULES)})", FLAGS)
    p.set_defaults(func=_main)
