"""What the corpus holds: counts per split by source / domain / kind / teacher, and length charts."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.mix.config import MixConfig
from pipeline.mix.plan import Plan
from pipeline.mix.scan import KINDS, SourceScan

__all__ = ["summarize", "length_charts"]


def _split_of(plan: Plan) -> np.ndarray:
    names = np.array([b.split("-")[0] for b in plan.buckets] + [""])
    return names[plan.bucket]  # -1 -> ""


def summarize(scans: list[SourceScan], plan: Plan, cfg: MixConfig) -> dict[str, Any]:
    """Counts of the selected records: ``by_source`` / ``by_domain`` / ``by_kind`` / ``by_teacher`` -> split -> n."""
    split = _split_of(plan)
    counts: dict[str, dict[str, dict[str, int]]] = {k: defaultdict(lambda: defaultdict(int))
                                                     for k in ("by_source", "by_domain", "by_kind", "by_teacher")}
    offset = 0
    for scan, src in zip(scans, cfg.sources):
        sp = split[offset:offset + len(scan)]
        for key, codes, names in (("by_domain", scan.domain, scan.domains), ("by_kind", scan.kind, KINDS),
                                  ("by_teacher", scan.teacher, scan.teachers)):
            for s in np.unique(sp[sp != ""]):
                vals, n = np.unique(codes[sp == s], return_counts=True)
                for v, c in zip(vals.tolist(), n.tolist()):
                    counts[key][names[v]][str(s)] += c
        for s in np.unique(sp[sp != ""]):
            counts["by_source"][src.name][str(s)] += int((sp == s).sum())
        offset += len(scan)
    splits = {s: int((split == s).sum()) for s in ("train", "validation") if (split == s).any()}
    out: dict[str, Any] = {"splits": splits}
    out.update({k: {a: dict(b) for a, b in v.items()} for k, v in counts.items()})
    return out


def length_charts(scans: list[SourceScan], plan: Plan, folder: Path) -> tuple[list[str], dict[str, Any]]:
    """``lengths_<kind>.png`` (completion tokens of the selected records) and their percentiles."""
    from pipeline.plots import histogram

    selected = plan.bucket >= 0
    tokens = np.concatenate([s.tokens for s in scans])[selected]
    kinds = np.concatenate([s.kind for s in scans])[selected]
    names, stats = [], {}
    for code, kind in enumerate(KINDS):
        t = tokens[kinds == code]
        if len(t) == 0:
            continue
        q = np.percentile(t, [50, 90, 99]).tolist()
        stats[kind] = {"n": int(len(t)), "mean": round(float(t.mean()), 1), "p50": q[0], "p90": q[1], "p99": q[2],
                       "max": int(t.max())}
        name = f"lengths_{kind}.png"
        if histogram(t.tolist(), folder / name, title=f"{kind}: completion tokens ({len(t)} records)",
                     xlabel="completion tokens"):
            names.append(name)
    return names, stats
