"""The demo's report: filter funnel, Pass@1 table with 95% intervals, fault shares, one verdict sentence.

Fault shares: the filter's style rules (``mixed_language``, ``redundancy``, ``code_block``) are run
through the filter stage itself, so "faulty" means exactly what the filter would have removed. They
run twice: over the eval responses (R1's T=0.6 / top-p 0.95, which cuts rare branches away) and over
the fault probe's responses, sampled like the corpus (T=1), where a student that learned the
teacher's faults from unfiltered traces shows them.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filters.registry import style_reasons
from pipeline.records import write_text_atomic

__all__ = ["STYLE_RULES", "fault_shares", "summarize", "verdict", "write_report", "console_summary"]

STYLE_RULES = tuple(style_reasons())  # the reason codes of the filter rules marked style (filters/registry.py)
BENCH = "demo_test"


def _runs(eval_result: dict[str, Any]) -> list[dict[str, Any]]:
    return eval_result["runs"] if "runs" in eval_result else [eval_result]


def fault_shares(eval_result: dict[str, Any], style_filter: Callable[[list[str], Path], dict], out: Path) -> dict:
    """``{label: {"responses", <rule>: count, "any": count}}`` over each model's eval responses."""
    shares = {}
    for i, run in enumerate(_runs(eval_result)):
        gens = Path(run["benchmarks"][BENCH]["samples_file"]).parent / "generations"
        rep = style_filter([str(gens)], out / f"model{i}")
        rules = rep["rules"]
        shares[run["label"]] = {"responses": rep["totals"]["input"], "any": rep["totals"]["rejected"],
                                **{r: rules.get(r, {}).get("rejected", 0) for r in STYLE_RULES}}
    return shares


def _pass1(run: dict[str, Any]) -> tuple[float, float, float]:
    m = run["benchmarks"][BENCH]
    return float(m["pass@1"]), float(m["ci95"][0]), float(m["ci95"][1])


def _share(row: dict[str, int] | None) -> float | None:
    return None if not row else 100.0 * row["any"] / max(1, row["responses"])


def verdict(table: dict[str, tuple[float, float, float]], n_test: int, probe: dict | None = None) -> str:
    """One sentence with the numbers: does the distilled student learn, how close is it to the teacher, and
    what did filtering change (faulty outputs at T=1 of the students trained with and without it)?"""
    t, u, s = table["teacher"][0], table["student (untrained)"][0], table["student SFT (filtered)"][0]
    k = table.get("student KD (filtered)", (None,))[0]
    gap = t - s
    close = "within" if gap <= 10 else "not within"
    kd = f"; the KD student scores {k:.1f}%" if k is not None else ""
    probe = probe or {}
    filt, unfilt = _share(probe.get("student SFT (filtered)")), _share(probe.get("student SFT (unfiltered)"))
    faults = ""
    if filt is not None and unfilt is not None:
        faults = (f"; sampled at T=1, {filt:.1f}% of its outputs are faulty against {unfilt:.1f}% for the student "
                  "trained on the unfiltered traces")
    return (f"On {n_test} held-out problems the SFT student distilled from filtered teacher traces scores "
            f"{s:.1f}% Pass@1 against {u:.1f}% before training and {t:.1f}% for the teacher, {close} 10 points of "
            f"the teacher ({gap:+.1f} points behind){kd}{faults}.")


def summarize(config: dict, teacher: dict, filter_report: dict, students: dict, eval_result: dict, faults: dict,
              world: dict, timings: dict, white_box: list | None = None) -> dict[str, Any]:
    table = {run["label"]: _pass1(run) for run in _runs(eval_result)}
    rules = filter_report["rules"]
    return {
        "pass1": {k: {"pass@1": v[0], "ci95": [v[1], v[2]]} for k, v in table.items()},
        "verdict": verdict(table, world["test"], faults.get("probe")),
        "filter": {"totals": filter_report["totals"],
                   "rejected_by_rule": {r: v.get("rejected", 0) for r, v in rules.items() if v.get("rejected")},
                   "output_dir": filter_report.get("output_dir")},
        "faults": faults,
        "teacher": {k: teacher.get(k) for k in ("key", "model_dir", "traces", "faulty_traces", "final_loss", "steps",
                                                "train_s", "cached")},
        "students": {k: {"model_dir": v.get("model_dir"), "steps": v.get("steps"), "final_loss": v.get("final_loss")}
                     for k, v in students.items()},
        "world": world,
        "timings_s": timings,
        "white_box": white_box or [],
        "comparison": eval_result.get("comparison"),
        "config": config,
    }


def write_report(summary: dict[str, Any], out: Path) -> dict[str, str]:
    """``report.md`` + ``pass1.png`` + ``faults.png`` (+ a copy of the filter's ``funnel.png``) in ``out``."""
    from pipeline.plots import bars_with_intervals

    labels = list(summary["pass1"])
    vals = [(v["pass@1"], v["ci95"][0], v["ci95"][1]) for v in summary["pass1"].values()]
    bars_with_intervals(labels, {"Pass@1 (%)": vals}, out / "pass1.png",
                        title="Pass@1 on the held-out demo problems (95% bootstrap interval)", ylabel="Pass@1 (%)")
    probe = summary["faults"]["probe"]
    probe_labels = [m for m in labels if m in probe]
    series = {rule: [(100.0 * probe[m][rule] / max(1, probe[m]["responses"]),) * 3 for m in probe_labels]
              for rule in STYLE_RULES}
    bars_with_intervals(probe_labels, series, out / "faults.png",
                        title="Faulty outputs at T=1 (the style rules' rejections)", ylabel="% of responses")
    funnel = Path(summary["filter"].get("output_dir") or out / "filter") / "funnel.png"
    if funnel.is_file() and funnel.resolve() != (out / "funnel.png").resolve():
        shutil.copyfile(funnel, out / "funnel.png")

    w, tot, tm = summary["world"], summary["filter"]["totals"], summary["timings_s"]
    lines = ["# distill demo", "", f"**{summary['verdict']}**", "",
             f"World: column addition/subtraction; the teacher learned from {w['teacher_train']} programmed traces "
             f"({summary['teacher']['faulty_traces']} of them deliberately faulty), then answered {w['prompts']} "
             f"generation prompts (+{w['leaked']} leaked held-out problems) for the students; {w['test']} held-out "
             "problems score every model.", "",
             "## Pass@1 on held-out problems", "", "| model | Pass@1 (%) | 95% interval |", "|---|---:|---|"]
    for name, v in summary["pass1"].items():
        lines.append(f"| {name} | {v['pass@1']:.1f} | [{v['ci95'][0]:.1f}, {v['ci95'][1]:.1f}] |")
    lines += ["", "![Pass@1](pass1.png)", ""]
    lines += _white_box_table(summary.get("white_box") or [], summary["pass1"])
    lines += ["## Filter funnel (teacher samples)", "",
              f"{tot['input']} samples in, {tot['kept']} kept. Rejections by reason (a sample can fail several rules):", "",
              "| reason | rejected |", "|---|---:|"]
    lines += [f"| {r} | {n} |" for r, n in summary["filter"]["rejected_by_rule"].items()]
    lines += ["", "![funnel](funnel.png)", "", "## Faulty outputs: what filtering changes", "",
              "The filter's style rules over responses to the held-out problems. At T=1 (the corpus's sampling) "
              "the teacher's rare fault branches fire and a student trained on unfiltered traces repeats them; "
              "R1's eval setting (T=0.6, top-p 0.95) cuts such branches away.", ""]
    lines += _fault_table("Sampled at T=1, top-p 1 (fault probe)", summary["faults"]["probe"], labels)
    lines += _fault_table("Eval responses (T=0.6, top-p 0.95)", summary["faults"]["eval"], labels)
    lines += ["", "![faults](faults.png)", "", "## Time", "",
              ", ".join(f"{k} {v:.0f} s" for k, v in tm.items()) + " (0 s: cached or already done).", ""]
    write_text_atomic(out / "report.md", "\n".join(lines))
    return {"markdown": str(out / "report.md"), "pass1_png": str(out / "pass1.png"),
            "faults_png": str(out / "faults.png"), "funnel_png": str(out / "funnel.png")}


def _white_box_table(rows: list[dict], pass1: dict) -> list[str]:
    """SFT vs the KD students at equal steps and at the SFT student's wall-clock (``student.white_box``)."""
    if not rows:
        return []

    def p(label: str | None) -> str:
        return f"{pass1[label]['pass@1']:.1f}" if label in pass1 else "-"

    out = ["## SFT vs KD at equal steps and at equal wall-clock", "",
           "Training seconds are this run's measured wall-clock per student (a KD run includes building its "
           "teacher cache); the equal-time students get the steps that fit in the SFT student's time.", "",
           "| student | steps | train s | Pass@1 (%) | steps in SFT's time | train s | Pass@1 (%) |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        timed = (f"{r['equal_time_steps']} | {r['equal_time_train_s']:.0f} | {p(r.get('equal_time_label'))}"
                 if "equal_time_steps" in r else f"{r['steps']} | {r['train_s']:.0f} | {p(r['label'])}")
        out.append(f"| {r['label']} | {r['steps']} | {r['train_s']:.0f} | {p(r['label'])} | {timed} |")
    return out + [""]


def _fault_table(title: str, shares: dict, labels: list[str]) -> list[str]:
    lines = [f"**{title}**", "", "| model | responses | " + " | ".join(STYLE_RULES) + " | any |",
             "|---|---:|" + "---:|" * (len(STYLE_RULES) + 1)]
    for m in (m for m in labels if m in shares):
        row = shares[m]
        cells = [f"{row[r]} ({100.0 * row[r] / max(1, row['responses']):.1f}%)" for r in (*STYLE_RULES, "any")]
        lines.append(f"| {m} | {row['responses']} | " + " | ".join(cells) + " |")
    return lines + [""]


def console_summary(summary: dict[str, Any]) -> str:
    lines = ["", "distill demo: Pass@1 on held-out problems"]
    for name, v in summary["pass1"].items():
        fa = summary["faults"]["probe"].get(name)
        faulty = f"   faulty at T=1: {fa['any']}/{fa['responses']}" if fa else ""
        lines.append(f"  {name:26s} {v['pass@1']:5.1f}%  [{v['ci95'][0]:.1f}, {v['ci95'][1]:.1f}]{faulty}")
    lines += [summary["verdict"], f"report: {summary['report']['markdown']}  "
              f"(total {summary['timings_s'].get('total', 0):.0f} s)"]
    return "\n".join(lines)
