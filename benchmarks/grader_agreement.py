"""Agreement of the grader with public graders' own test suites, where their label is a mathematical truth.

    python benchmarks/grader_agreement.py            # prints the figure and every disagreement
    python benchmarks/grader_agreement.py --json out.json

Cases: ``tests/data/grader_cases.jsonl`` (Math-Verify, MARIO_EVAL, the MATH authors' ``is_equiv``
tests, NeMo-Skills, lighteval; each cites repository, commit and line or test parameter); the cases left out and
why: ``tests/data/grader_cases_skipped.md``. Also prints the agreement per source suite, grading
time per case, and checks that ``equivalent`` (cons@k) is symmetric on every bare-answer pair.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.grader_suite import agreement, load_cases, reference_of  # noqa: E402
from pipeline.grading import equivalent  # noqa: E402

TARGET = 0.97


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default=str(ROOT / "tests" / "data" / "grader_cases.jsonl"))
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args()
    cases = load_cases(args.cases)
    t = time.perf_counter()
    rate, wrong = agreement(cases)
    dt = time.perf_counter() - t
    suite = lambda c: c.source.split("@")[0]  # noqa: E731
    total, bad = Counter(suite(c) for c in cases), Counter(suite(c) for c, _ in wrong)
    print(f"agreement with public grader suites: {rate:.1%} ({len(cases) - len(wrong)}/{len(cases)} cases), "
          f"target >= {TARGET:.0%}: {'MEETS' if rate >= TARGET else 'BELOW'}; {1000 * dt / len(cases):.1f} ms/case")
    for name, n in sorted(total.items()):
        print(f"  {name}: {1 - bad[name] / n:.1%} of {n}")
    for c, ours in wrong:
        print(f"  disagree: {c.source} label={int(c.label)} ours={int(ours)} gold={c.gold[:60]!r} pred={c.pred[-60:]!r}")
    asym = [c.source for c in cases if c.mode == "answer"
            and equivalent(reference_of(c.gold), c.pred.strip("$ ")) != equivalent(c.pred.strip("$ "), reference_of(c.gold))]
    print(f"equivalent() symmetric on {sum(c.mode == 'answer' for c in cases) - len(asym)} of "
          f"{sum(c.mode == 'answer' for c in cases)} bare-answer pairs" + (f"; asymmetric: {asym}" if asym else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"agreement": rate, "cases": len(cases), "per_suite": {
            k: 1 - bad[k] / v for k, v in total.items()}, "disagreements": [c.source for c, _ in wrong],
            "asymmetric": asym}, indent=2) + "\n")


if __name__ == "__main__":
    main()
