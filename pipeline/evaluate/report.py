"""Eval reports: a Markdown table and a PNG per run, and a side-by-side comparison of several runs.

A results dict is what :func:`pipeline.evaluate.stage.run` returns and writes to ``results.json``:
``{"label", "model", "benchmarks": {name: {"pass@1", "ci95", "pass@k", "cons@k", ...}}, ...}``
(percentages). When a model name matches one of the DeepSeek-R1 paper's distilled models, the
paper's numbers are printed beside ours (:mod:`pipeline.evaluate.reference`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.evaluate.reference import PAPER, PAPER_SOURCE, match_reference
from pipeline.records import write_json_atomic, write_text_atomic

__all__ = ["fmt", "run_table", "write_run_report", "load_results", "comparison_table", "write_comparison",
           "paper_values"]

DISPLAY = {"math500": "MATH-500", "aime24": "AIME 2024", "amc23": "AMC 2023", "gsm8k": "GSM8K", "mmlu_stem": "MMLU STEM",
           "gpqa": "GPQA"}


def fmt(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def _display(name: str) -> str:
    return DISPLAY.get(name, name)


def paper_values(results: dict[str, Any]) -> tuple[str | None, dict[str, dict[str, float]]]:
    key = results.get("paper_model") or match_reference(results.get("model"), results.get("label"))
    return key, (PAPER.get(key, {}) if key else {})


def run_table(results: dict[str, Any]) -> str:
    """Markdown: one row per benchmark with every metric (and the paper's pass@1 when matched)."""
    benches = results.get("benchmarks", {})
    pass_ks = sorted({int(k) for m in benches.values() for k in m.get("pass@k", {}) if int(k) > 1})
    cons_ks = sorted({int(k) for m in benches.values() for k in m.get("cons@k", {})})
    paper_key, paper = paper_values(results)
    head = (["benchmark", "problems", "k", "pass@1", "95% CI"] + [f"pass@{k}" for k in pass_ks]
            + [f"cons@{k}" for k in cons_ks] + ["truncated %", "no answer %", "mean tokens"])
    if paper:
        head += ["paper pass@1"]
    rows = []
    for name, m in benches.items():
        k = m["n_min"] if m.get("n_min") == m.get("n_max") else f"{m.get('n_min')}–{m.get('n_max')}"
        ci = m.get("ci95") or [None, None]
        row = [_display(name), str(m.get("problems")), str(k), fmt(m.get("pass@1")), f"{fmt(ci[0])}–{fmt(ci[1])}"]
        row += [fmt(m.get("pass@k", {}).get(str(kk))) for kk in pass_ks]
        row += [fmt(m.get("cons@k", {}).get(str(kk))) for kk in cons_ks]
        row += [fmt(m.get("truncation_rate")), fmt(m.get("no_answer_rate")), fmt(m.get("mean_response_tokens"), 0)]
        if paper:
            row.append(fmt(paper.get(name, {}).get("pass@1")))
        rows.append(row)
    lines = [f"### {results.get('label') or results.get('model')}", ""]
    s = results.get("sampling", {})
    if s:
        lines.append(f"model `{results.get('model')}`, backend {results.get('backend')}, temperature {s.get('temperature')}, "
                     f"top-p {s.get('top_p')}, max tokens {s.get('max_tokens')}; percentages.")
        lines.append("")
    lines += _md(head, rows)
    if paper:
        lines += ["", f"Paper: {paper_key}, {PAPER_SOURCE}."]
    timeouts = sum(m.get("grading_timeouts", 0) for m in benches.values())
    if timeouts:
        lines += ["", f"{timeouts} responses hit a timeout (grading, or for code the program's run) and count as wrong."]
    return "\n".join(lines) + "\n"


def _md(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _interval_chart(groups: list[str], series: dict[str, list[tuple[float, float, float]]], path: Path,
                    title: str) -> Path | None:
    from pipeline.plots import bars_with_intervals

    return bars_with_intervals([_display(g) for g in groups], series, path, title, "pass@1 (%)")


def write_run_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """``results.md`` and ``pass1.png`` (pass@1 with its 95% interval per benchmark)."""
    out_dir = Path(out_dir)
    write_text_atomic(out_dir / "results.md", run_table(results))
    benches = list(results.get("benchmarks", {}))
    series = {results.get("label") or "model": [_bar(results["benchmarks"][b]) for b in benches]}
    paper_key, paper = paper_values(results)
    if paper and any(b in paper for b in benches):
        series[f"paper: {paper_key}"] = [_paper_bar(paper, b) for b in benches]
    png = _interval_chart(benches, series, out_dir / "pass1.png", f"pass@1, {results.get('label') or results.get('model')}")
    return {"markdown": str(out_dir / "results.md"), "png": str(png) if png else ""}


def _bar(m: dict[str, Any] | None) -> tuple[float, float, float]:
    if not m:
        return (float("nan"),) * 3
    lo, hi = m.get("ci95") or [m["pass@1"], m["pass@1"]]
    return (m["pass@1"], lo, hi)


def _paper_bar(paper: dict[str, dict[str, float]], bench: str) -> tuple[float, float, float]:
    v = paper.get(bench, {}).get("pass@1", float("nan"))
    return (v, v, v)


def load_results(item: str | Path | dict[str, Any]) -> dict[str, Any]:
    """A results dict from a dict, a ``results.json`` path, or a folder holding one."""
    if isinstance(item, dict):
        return item
    p = Path(item)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        from pipeline.config import ConfigError

        raise ConfigError(f"{p}: results file not found (give results.json files or eval output folders)")
    data = json.loads(p.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "benchmarks" not in data:
        from pipeline.config import ConfigError

        raise ConfigError(f"{p}: not an eval results file (no 'benchmarks' key)")
    return data


def _labels(runs: list[dict[str, Any]]) -> list[str]:
    labels, seen = [], {}
    for r in runs:
        base = str(r.get("label") or r.get("model") or "model")
        seen[base] = seen.get(base, 0) + 1
        labels.append(base if seen[base] == 1 else f"{base} ({seen[base]})")
    return labels


def _benchmarks_of(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Every benchmark any run has, in first-seen order."""
    return list(dict.fromkeys(b for r in runs for b in r.get("benchmarks", {})))


def comparison_table(runs: Sequence[dict[str, Any]]) -> str:
    """Markdown: one row per model (and per matched paper model), pass@1 [95% CI] per benchmark."""
    runs = list(runs)
    labels = _labels(runs)
    benches = _benchmarks_of(runs)
    head = ["model"] + [f"{_display(b)} pass@1 [95% CI]" for b in benches] + ["k", "truncated %"]
    rows = []
    papers: list[str] = []
    for label, r in zip(labels, runs):
        row = [label]
        trunc = []
        for b in benches:
            m = r.get("benchmarks", {}).get(b)
            if not m:
                row.append("–")
                continue
            ci = m.get("ci95") or [None, None]
            row.append(f"{fmt(m['pass@1'])} [{fmt(ci[0])}, {fmt(ci[1])}]")
            trunc.append(m.get("truncation_rate") or 0.0)
        ks = sorted({m.get("n_min") for m in r.get("benchmarks", {}).values()})
        row += ["/".join(str(k) for k in ks), fmt(sum(trunc) / len(trunc)) if trunc else "–"]
        rows.append(row)
        key, _ = paper_values(r)
        if key and key not in papers:
            papers.append(key)
    for key in papers:
        paper = PAPER[key]
        rows.append([f"{key} (paper)"] + [fmt(paper.get(b, {}).get("pass@1")) if paper.get(b) else "–"
                                          for b in benches] + ["", ""])
    lines = _md(head, rows)
    if papers:
        lines += ["", f"Paper rows: {PAPER_SOURCE}."]
    return "\n".join(lines) + "\n"


def write_comparison(runs: Sequence[dict[str, Any] | str | Path], out_dir: str | Path,
                     title: str = "pass@1 by model") -> dict[str, str]:
    """Write ``comparison.md``, ``comparison.json`` and ``comparison.png`` (bars with 95% intervals,
    one series per model, plus the paper's numbers for matched models) into ``out_dir``."""
    loaded = [load_results(r) for r in runs]
    if not loaded:
        raise ValueError("write_comparison: no results given")
    out_dir = Path(out_dir)
    labels = _labels(loaded)
    benches = _benchmarks_of(loaded)
    series = {label: [_bar(r.get("benchmarks", {}).get(b)) for b in benches] for label, r in zip(labels, loaded)}
    summary: dict[str, Any] = {"benchmarks": benches, "models": {}}
    for label, r in zip(labels, loaded):
        summary["models"][label] = {
            "model": r.get("model"),
            "pass@1": {b: r["benchmarks"][b]["pass@1"] for b in benches if b in r.get("benchmarks", {})},
            "ci95": {b: r["benchmarks"][b].get("ci95") for b in benches if b in r.get("benchmarks", {})},
        }
    for r in loaded:
        key, paper = paper_values(r)
        name = f"paper: {key}"
        if paper and name not in series and any(b in paper for b in benches):
            series[name] = [_paper_bar(paper, b) for b in benches]
            summary.setdefault("paper", {})[key] = {b: paper[b]["pass@1"] for b in benches if b in paper}
    write_text_atomic(out_dir / "comparison.md", f"## {title}\n\n" + comparison_table(loaded))
    write_json_atomic(out_dir / "comparison.json", summary)
    png = _interval_chart(benches, series, out_dir / "comparison.png", title)
    return {"markdown": str(out_dir / "comparison.md"), "json": str(out_dir / "comparison.json"),
            "png": str(png) if png else ""}
