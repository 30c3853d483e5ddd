"""The dataset card: a Hugging Face ``README.md`` (YAML header + the facts of the corpus).

Header: license, task categories, size category, ``configs`` (the data files of each split, so
``load_dataset(folder)`` finds them) and ``dataset_info`` (features, split sizes). Body: counts per
split / source / domain / kind / teacher, what dedup removed across sources, the completion-length
histograms, each source's filter funnel and decontamination from its ``report.json``, and the
commands that made the corpus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.mix.config import MixConfig
from pipeline.mix.write import FEATURES

__all__ = ["write_card", "size_category"]


def size_category(n: int) -> str:
    """The Hub's size bucket for ``n`` rows (``100K<n<1M`` ...)."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M")]
    for limit, label in bounds:
        if n < limit:
            return label
    return "n>1T" if n > 10 ** 12 else "100M<n<1B"


def _features() -> list[dict[str, Any]]:
    out = []
    for name, dtype in FEATURES.items():
        if dtype == "messages":
            out.append({"name": name, "list": [{"name": "role", "dtype": "string"},
                                               {"name": "content", "dtype": "string"}]})
        else:
            out.append({"name": name, "dtype": dtype})
    return out


def _header(cfg: MixConfig, summary: dict[str, Any], shards: list[dict[str, Any]]) -> str:
    splits = summary["splits"]
    info_splits = []
    for split, n in splits.items():
        mine = [s for s in shards if s["name"].startswith(split + "-")]
        info_splits.append({"name": split, "num_bytes": sum(s["num_bytes"] for s in mine), "num_examples": n})
    head = {
        "license": cfg.license,
        "task_categories": ["text-generation"],
        "language": ["en"],
        "tags": ["reasoning", "distillation", "synthetic", "chain-of-thought"],
        "size_categories": [size_category(sum(splits.values()))],
        "pretty_name": cfg.pretty_name or Path(cfg.output_dir).name,
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in splits]}],
        "dataset_info": {"features": _features(), "splits": info_splits,
                         "download_size": sum(s["file_bytes"] for s in shards),
                         "dataset_size": sum(s["num_bytes"] for s in shards)},
    }
    return "---\n" + yaml.safe_dump(head, sort_keys=False, allow_unicode=True) + "---\n"


def _table(title: str, counts: dict[str, dict[str, int]], splits: list[str]) -> list[str]:
    lines = [f"| {title} | " + " | ".join(splits) + " | share |", "|---|" + "---:|" * (len(splits) + 1)]
    total = sum(sum(v.values()) for v in counts.values()) or 1
    for key, v in sorted(counts.items(), key=lambda kv: -sum(kv[1].values())):
        lines.append(f"| {key} | " + " | ".join(str(v.get(s, 0)) for s in splits)
                     + f" | {100 * sum(v.values()) / total:.1f}% |")
    return lines + [""]


def _funnel(name: str, report: dict[str, Any] | None) -> list[str]:
    if report is None:
        return [f"- **{name}**: no filter report.json next to the source; its filtering is not documented here.", ""]
    t = report.get("totals", {})
    steps = [f"{t.get('input', '?')} generated"]
    for rule, r in report.get("rules", {}).items():
        if r.get("first_failed"):
            steps.append(f"-{r['first_failed']} {rule}")
    steps.append(f"= {t.get('kept', '?')} kept")
    return [f"- **{name}**: " + ", ".join(steps), ""]


def _decontam(cfg: MixConfig, reports: dict[str, dict[str, Any] | None]) -> list[str]:
    lines = []
    for s in cfg.sources:
        rep = reports.get(s.name)
        rule = (rep or {}).get("rules", {}).get("contaminated")
        if not rule:
            lines.append(f"- **{s.name}**: not decontaminated by `distill filter` (no `contaminated` rule in its report).")
            continue
        dc = ((rep or {}).get("config") or {}).get("decontam") or {}
        named = [f"{b['name']} ({b.get('problems', '?')} problems, sha256 {str(b.get('sha256', ''))[:12]})"
                 for b in (rep or {}).get("decontam_benchmarks") or []]
        benches = ", ".join(named or [Path(b).stem for b in dc.get("benchmarks", [])]) or "(benchmarks not recorded)"
        n = dc.get("n", "?")
        hits = ", ".join(f"{k} {v}" for k, v in (rule.get("benchmark_hits") or {}).items()) or "none"
        lines.append(f"- **{s.name}**: prompts checked against {benches} for shared {n}-word spans; "
                     f"{rule.get('rejected', 0)} of {rule.get('checked', 0)} checked records removed "
                     f"(hits per benchmark: {hits}).")
    return lines + [""]


def write_card(cfg: MixConfig, summary: dict[str, Any], shards: list[dict[str, Any]],
               reports: dict[str, dict[str, Any] | None], commands: list[str], pngs: list[str]) -> str:
    """The README.md text."""
    splits = list(summary["splits"])
    total = sum(summary["splits"].values())
    lines = [_header(cfg, summary, shards), f"# {cfg.pretty_name or Path(cfg.output_dir).name}", "",
             f"A distillation corpus of {total} chat records (`messages`; assistant turns open with a "
             "`<think>` block, empty for non-reasoning samples) mixed by `distill mix` from "
             f"{len(cfg.sources)} filtered source(s), deduplicated across sources, shuffled with seed {cfg.seed}.", "",
             "```python", "from datasets import load_dataset", "",
             "ds = load_dataset(\"parquet\", data_files={" + ", ".join(f'"{s}": "data/{s}-*.parquet"' for s in splits) + "})",
             "# or, from the Hub / this folder: load_dataset(REPO_OR_FOLDER)", "```", "",
             "## Counts", ""]
    for title, key in (("source", "by_source"), ("domain", "by_domain"), ("kind", "by_kind"), ("teacher", "by_teacher")):
        lines += _table(title, summary[key], splits)
    lines += ["## Quotas and deduplication", "", "| source | input | exact dup. | near dup. | distinct | quota | taken |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in summary["sources"].items():
        lines.append(f"| {name} | {s['input']} | {s['exact_duplicates']} | {s['near_duplicates']} | {s['available']} | "
                     f"{s['quota']} | {s['selected']} |")
    nd = cfg.near_dedup
    lines += ["", "Exact duplicates: the same prompt and response (copies that differ only in case or "
              "whitespace have equal MinHash signatures and go as near duplicates). Near duplicates: "
              f"one-permutation MinHash ({nd.num_perm} bins, {nd.shingle_words}-word shingles over the prompt and "
              f"the response's first {nd.window_words} words), estimated Jaccard >= {nd.threshold}" + ("" if nd.enabled else " (off)")
              + ". The copy from the earlier source in the mix order is kept.", "",
              "## Completion lengths", ""] + [f"![{p}]({p})" for p in pngs] + [""]
    lines += ["## Filtering (per source, first failed rule)", ""]
    for s in cfg.sources:
        lines += _funnel(s.name, reports.get(s.name))
    lines += ["## Decontamination", ""] + _decontam(cfg, reports)
    lines += ["## How it was made", "", "```bash"] + commands + ["```", "",
              "Fields: " + ", ".join(f"`{k}`" for k in FEATURES) + ". `metadata` holds every other field of the "
              "source record as JSON (sampling settings, finish reason, prompt metadata).", ""]
    return "\n".join(lines)
