"""Grading throughput on R1-length responses, and the eval's wall time split (generation vs grading).

    python benchmarks/grade_throughput.py                    # 10,000 responses, every core
    python benchmarks/grade_throughput.py --n 2000 --workers 2 --skip-eval
    git show 1c27d39:pipeline/grading.py > /tmp/old_grading.py
    python benchmarks/grade_throughput.py --n 2000 --skip-eval --other-grader /tmp/old_grading.py

Part 1 synthesises ``--n`` responses of about 4K tokens each (a long ``<think>`` block built from
real MATH solutions, then a final ``\\boxed{}``), with answers taken from MATH-500 when
``../shared/data`` is there: right as written, right in another form (``\\dfrac``, decimal,
thousands separators), wrong, truncated (no ``</think>``), no final answer, and a few pathological
ones (power towers that sympy would expand forever). It grades them

* serially in this process (the baseline: one core, ``--baseline-n`` responses), and
* with :func:`pipeline.grading.grade_many` over ``--workers`` processes (all of them),

and prints responses/s, responses/s per core, the parallel speed-up over the baseline, the
per-status counts, and how many hit the per-item timeout (they count as wrong). Target: at least
200 graded responses/s per core.

Part 2 runs ``distill eval`` (transformers backend) on a tiny random model for a few MATH-500
problems and prints the wall time split: model load + generation vs grading vs metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.grading import grade, grade_many, warm_up  # noqa: E402

TARGET_PER_CORE = 200.0
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PATHOLOGICAL = ["9^{9^{9^{9^{9}}}}", "2^{2^{2^{2^{2^{2}}}}}", "10^{10^{10^{10}}}-1", "9^{9^{9}}"]


def _answers_and_filler(seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    answers, filler = [], []
    for name in ("math500.jsonl", "math_train_sample2000.jsonl"):
        f = SHARED / name
        if f.is_file():
            for line in f.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                if name == "math500.jsonl":
                    answers.append(str(row["answer"]))
                if row.get("solution"):
                    filler.append(row["solution"])
    if not answers:  # no shared data: synthetic answers of the usual shapes
        answers = [str(rng.randint(0, 999)) for _ in range(300)] + [f"\\frac{{{rng.randint(1, 9)}}}{{{rng.randint(10, 99)}}}"
                                                                     for _ in range(100)] + ["(1,2)", "[0,1)", "\\sqrt{2}"]
    if not filler:
        filler = ["Let us compute the sum step by step. First, 12 + 30 = 42, then we check 42 - 30 = 12. " * 4]
    return answers, filler


def _other_form(ans: str) -> str:
    """The same answer written differently (a form the normal form or math-verify must see through)."""
    if ans.isdigit() and len(ans) >= 4:
        return f"{int(ans):,}"
    if ans.isdigit():
        return f"{ans}.0"
    if "\\frac" in ans:
        return ans.replace("\\frac", "\\dfrac")
    return f"${ans}$"


def _wrong(ans: str, rng: random.Random) -> str:
    if ans.lstrip("-").isdigit():
        return str(int(ans) + rng.choice([-2, -1, 1, 3, 10]))
    return rng.choice(["0", "1", "\\frac{1}{2}", "\\sqrt{3}", "2\\pi", "(1,2)", "x^2+1"])


def synthesize(n: int, seed: int = 0, target_chars: int = 16000) -> tuple[list[tuple[str, str]], Counter]:
    """``n`` (response, reference) pairs of ~4K tokens (~16K characters) each, and their kinds."""
    rng = random.Random(seed)
    answers, filler = _answers_and_filler(seed)
    pairs, kinds = [], Counter()
    for i in range(n):
        ref = rng.choice(answers)
        parts, size = [], 0
        while size < target_chars:
            chunk = rng.choice(filler)
            parts.append(chunk)
            size += len(chunk)
        think = "\n\n".join(parts)[:target_chars]
        r = rng.random()
        if i % 1000 == 999:  # 0.1%: answers sympy cannot finish
            kind, final = "pathological", f"\\boxed{{{rng.choice(PATHOLOGICAL)}}}"
        elif r < 0.40:
            kind, final = "right", f"\\boxed{{{ref}}}"
        elif r < 0.50:
            kind, final = "right_other_form", f"\\boxed{{{_other_form(ref)}}}"
        elif r < 0.85:
            kind, final = "wrong", f"\\boxed{{{_wrong(ref, rng)}}}"
        elif r < 0.95:
            kind, final = "truncated", None
        else:
            kind, final = "no_answer", ""
        if final is None:
            resp = f"<think>\n{think}"
        else:
            resp = f"<think>\n{think}\n</think>\n\nPutting it together, the final answer is ${final}$." if final \
                else f"<think>\n{think}\n</think>\n\nI could not finish."
        pairs.append((resp, ref))
        kinds[kind] += 1
    return pairs, kinds


def bench_grading(args: argparse.Namespace) -> dict:
    workers = args.workers or len(os.sched_getaffinity(0))
    t = time.perf_counter()
    pairs, kinds = synthesize(args.n, args.seed)
    synth_s = time.perf_counter() - t
    mean_chars = sum(len(r) for r, _ in pairs) / len(pairs)
    print(f"synthesised {len(pairs):,} responses ({mean_chars:,.0f} chars, ~{mean_chars / 4:,.0f} tokens each) "
          f"in {synth_s:.1f}s: {dict(kinds)}")
    import math_verify  # noqa: F401  (import once in the parent so forked workers share it)

    # Warm up (sympy's LaTeX grammar loads on the first parse, ~1-2 s): otherwise the first item that
    # reaches math-verify can hit a 1 s timeout in the serial run only, and the two runs disagree.
    warm_up()

    base = pairs[: args.baseline_n]
    t = time.perf_counter()
    serial = [grade(r, a, timeout_s=args.timeout) for r, a in base]
    serial_s = time.perf_counter() - t
    serial_rate = len(base) / serial_s
    print(f"baseline (serial, 1 core): {len(base):,} in {serial_s:.1f}s = {serial_rate:,.0f} responses/s")

    t = time.perf_counter()
    grades = grade_many(pairs, workers=workers, timeout_s=args.timeout)
    par_s = time.perf_counter() - t
    par_rate = len(pairs) / par_s
    statuses = Counter(g.status for g in grades)
    assert grades[: len(base)] == serial, "parallel grading disagrees with serial grading"
    per_core = par_rate / workers
    print(f"parallel ({workers} workers): {len(pairs):,} in {par_s:.1f}s = {par_rate:,.0f} responses/s "
          f"= {per_core:,.0f}/s per core; speed-up x{par_rate / serial_rate:.2f} over the serial baseline")
    print(f"statuses: {dict(statuses)}; {statuses.get('timeout', 0)} hit the {args.timeout:g}s timeout "
          f"(counted wrong)")
    verdict = "MEETS" if per_core >= TARGET_PER_CORE else "BELOW"
    print(f"target >= {TARGET_PER_CORE:.0f}/s per core: {verdict} ({per_core / TARGET_PER_CORE:.2f}x target)")
    return {"responses": len(pairs), "mean_chars": mean_chars, "kinds": dict(kinds), "workers": workers,
            "serial_rate": serial_rate, "parallel_rate": par_rate, "per_core_rate": per_core,
            "speedup": par_rate / serial_rate, "statuses": dict(statuses), "timeout_s": args.timeout,
            "target_per_core": TARGET_PER_CORE}


def bench_against_other_grader(args: argparse.Namespace) -> dict:
    """Serial rate of this grader vs another ``grading.py`` (e.g. ``git show REF:pipeline/grading.py``),
    interleaved in one process so machine load hits both alike; also counts verdicts that differ."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("other_grading", args.other_grader)
    other = importlib.util.module_from_spec(spec)
    sys.modules["other_grading"] = other
    spec.loader.exec_module(other)
    pairs, _ = synthesize(args.baseline_n, args.seed + 1)
    rates: dict[str, list[float]] = {"this": [], "other": []}
    verdicts = {}
    for _ in range(2):
        for name, fn in (("other", other.grade), ("this", grade)):
            t = time.perf_counter()
            verdicts[name] = [fn(r, a, timeout_s=args.timeout).status for r, a in pairs]
            rates[name].append(len(pairs) / (time.perf_counter() - t))
    this, oth = max(rates["this"]), max(rates["other"])
    differ = sum(a != b for a, b in zip(verdicts["this"], verdicts["other"]))
    print(f"this grader {this:,.0f}/s vs {args.other_grader} {oth:,.0f}/s (serial, best of 2 interleaved): "
          f"x{this / oth:.2f}; {differ} of {len(pairs)} statuses differ")
    return {"this_rate": this, "other_rate": oth, "ratio": this / oth, "statuses_differ": differ}


def bench_eval_split(args: argparse.Namespace) -> dict | None:
    if not (SHARED / "math500.jsonl").is_file():
        print("eval split: skipped (../shared/data/math500.jsonl not found)")
        return None
    from pipeline.evaluate.stage import EvalConfig, run
    from pipeline.tiny import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "tiny")
        cfg = EvalConfig.model_validate(dict(
            model=str(model), label="tiny-random", backend="transformers",
            benchmarks=[{"name": "math500", "limit": args.eval_problems}],
            sampling={"n": args.eval_n, "max_tokens": args.eval_tokens}, pass_k=[1, args.eval_n],
            output_dir=str(Path(tmp) / "eval"), grading_workers=args.workers, progress=False,
            transformers={"device": "cpu"}))
        t = time.perf_counter()
        res = run(cfg)
        wall = time.perf_counter() - t
    tm = res["timing"]
    other = wall - tm["generation_s"] - tm["grading_s"] - tm["metrics_s"]
    print(f"eval wall time {wall:.1f}s ({args.eval_problems} MATH-500 problems x {args.eval_n} samples x "
          f"{args.eval_tokens} tokens, tiny model, transformers): model load {tm['model_load_s']:.1f}s + generation "
          f"{tm['generation_s'] - tm['model_load_s']:.1f}s ({100 * tm['generation_s'] / wall:.0f}% with load), grading "
          f"{tm['grading_s']:.2f}s ({100 * tm['grading_s'] / wall:.1f}%), metrics {tm['metrics_s']:.2f}s, "
          f"other {other:.1f}s")
    return {"wall_s": wall, **{k: v for k, v in tm.items() if k != "per_benchmark"}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000, help="responses to grade")
    p.add_argument("--baseline-n", type=int, default=1000, help="responses graded serially for the baseline")
    p.add_argument("--workers", type=int, default=0, help="grading processes (0: every core)")
    p.add_argument("--timeout", type=float, default=1.0, help="per-item math-verify timeout (s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-eval", action="store_true", help="skip the eval wall-time split")
    p.add_argument("--eval-problems", type=int, default=20)
    p.add_argument("--eval-n", type=int, default=2)
    p.add_argument("--eval-tokens", type=int, default=64)
    p.add_argument("--other-grader", help="a grading.py to compare speed with, e.g. from "
                   "`git show REF:pipeline/grading.py > /tmp/old_grading.py`")
    p.add_argument("--json", help="also write the numbers to this JSON file")
    args = p.parse_args()
    out = {"grading": bench_grading(args)}
    if args.other_grader:
        out["vs_other_grader"] = bench_against_other_grader(args)
    if not args.skip_eval:
        out["eval_split"] = bench_eval_split(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
