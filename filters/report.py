"""Counting what the rules did, and writing it down: report.json, report.md, funnel.png.

Per rule: ``checked`` (records in the rule's scope that reached it), ``rejected`` and
``rejected_only`` (rejected by this rule and no other: what switching the rule off would let
through). Per domain: input/kept/rejected and rejections per rule. The funnel charges each rejected
record to the first rule, in pipeline order, that it failed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.records import write_json_atomic, write_text_atomic

from filters.registry import rule_of

__all__ = ["Tally", "write_reports", "print_summary"]


class Tally:
    """Running counters; picklable (saved in the resume checkpoint)."""

    def __init__(self, order: list[str]):
        self.order = list(order)
        self.input = self.kept = self.rejected = self.bad_lines = 0
        self.checked: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.only: Counter[str] = Counter()
        self.first: Counter[str] = Counter()
        self.domains: dict[str, dict[str, Any]] = {}
        self.notes: dict[str, Counter[str]] = {}  # reason -> note item -> records

    def add(self, domain: str, checked: tuple[str, ...] | list[str], failed: dict[str, str], notes: dict[str, str]) -> None:
        self.input += 1
        d = self.domains.setdefault(domain, {"input": 0, "kept": 0, "rejected": 0, "by_rule": Counter()})
        d["input"] += 1
        self.checked.update(checked)
        for reason, note in notes.items():  # a comma-separated note counts each item
            self.notes.setdefault(reason, Counter()).update(note.split(","))
        if not failed:
            self.kept += 1
            d["kept"] += 1
            return
        self.rejected += 1
        d["rejected"] += 1
        self.failed.update(failed.keys())
        d["by_rule"].update(failed.keys())
        if len(failed) == 1:
            self.only.update(failed.keys())
        self.first[min(failed, key=lambda r: self.order.index(r) if r in self.order else len(self.order))] += 1

    def to_dict(self) -> dict[str, Any]:
        rules = {r: {"checked": self.checked[r], "rejected": self.failed[r], "rejected_only": self.only[r],
                     "first_failed": self.first[r]} for r in self.order}
        for reason in self.order:  # each rule's own report fields from its notes
            rule = rule_of(reason)
            if rule is not None:
                rules[reason].update(rule.note_summary(self.notes.get(reason, Counter())))
        return {
            "totals": {"input": self.input, "kept": self.kept, "rejected": self.rejected,
                       "bad_lines": self.bad_lines,
                       "kept_frac": round(self.kept / self.input, 4) if self.input else 0.0},
            "rules": rules,
            "domains": {k: {"input": v["input"], "kept": v["kept"], "rejected": v["rejected"],
                            "by_rule": dict(sorted(v["by_rule"].items()))} for k, v in sorted(self.domains.items())},
        }


def _markdown(report: dict[str, Any]) -> str:
    t = report["totals"]
    lines = ["# Filter report", "",
             f"Input {t['input']} records: kept {t['kept']} ({100 * t['kept_frac']:.1f}%), rejected {t['rejected']}, "
             f"bad lines {t['bad_lines']}.", "",
             "| rule | checked | rejected | rejected only by this rule | first failure |",
             "|---|---:|---:|---:|---:|"]
    for name, r in report["rules"].items():
        lines.append(f"| {name} | {r.get('checked', 0)} | {r.get('rejected', 0)} | {r.get('rejected_only', 0)} | "
                     f"{r.get('first_failed', 0)} |")
    for name, entry in report["rules"].items():
        rule = rule_of(name)
        line = rule.note_line(entry) if rule is not None else None
        if line:
            lines += ["", line]
    lines += ["", "| domain | input | kept | rejected | top reasons |", "|---|---:|---:|---:|---|"]
    for name, d in report["domains"].items():
        top = ", ".join(f"{k} {v}" for k, v in sorted(d["by_rule"].items(), key=lambda kv: -kv[1])[:4])
        lines.append(f"| {name} | {d['input']} | {d['kept']} | {d['rejected']} | {top} |")
    if report.get("decontam_benchmarks"):
        lines += ["", "Decontaminated against: " + "; ".join(
            f"{b['name']} ({b['location']}, {b['problems']} problems, sha256 of the {b['sha256_of']} "
            f"{b['sha256'][:16]}…)" for b in report["decontam_benchmarks"]) + "."]
    if report.get("run"):
        r = report["run"]
        lines += ["", f"Run: {r.get('seconds', 0):.1f} s, {r.get('records_per_s', 0):.0f} records/s, "
                  f"{r.get('workers')} worker(s)."]
    return "\n".join(lines) + "\n"


def write_reports(report: dict[str, Any], out: Path) -> None:
    """report.md and funnel.png first, report.json last (its presence marks a finished run)."""
    from pipeline.plots import barh

    t = report["totals"]
    labels, values, notes = ["input"], [t["input"]], [str(t["input"])]
    remaining = t["input"]
    for name, r in report["rules"].items():
        if not r.get("checked") and not r.get("rejected"):
            continue
        remaining -= r.get("first_failed", 0)
        labels.append(f"after {name}")
        values.append(remaining)
        notes.append(f"{remaining}  (-{r.get('first_failed', 0)}; only this rule: {r.get('rejected_only', 0)})")
    barh(labels, values, out / "funnel.png", title="Filter funnel (records remaining after each rule)",
         xlabel="records", annotate=notes)
    write_text_atomic(out / "report.md", _markdown(report))
    write_json_atomic(out / "report.json", report)


def print_summary(report: dict[str, Any]) -> None:
    t = report["totals"]
    print(f"filter: kept {t['kept']} / {t['input']} ({100 * t['kept_frac']:.1f}%), rejected {t['rejected']}, "
          f"bad lines {t['bad_lines']}")
    for name, r in report["rules"].items():
        if r.get("rejected"):
            print(f"  {name:16s} rejected {r['rejected']:>8d}   only this rule {r['rejected_only']:>8d}")
    if report.get("output_dir"):
        print(f"  -> {report['output_dir']}/kept.jsonl, rejected.jsonl, report.json, report.md, funnel.png")
