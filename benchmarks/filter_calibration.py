"""Filter calibration: false rejects on clean realistic traces, catch rate on faulty ones, per rule.

    python benchmarks/filter_calibration.py                     # every clean trace, 400 per fault
    python benchmarks/filter_calibration.py --faulty-n 100 --json out.json   # + out.png

Clean traces (the largest realistic set that can be built here, all from real public solutions):

* every MATH train-sample and MATH-500 solution in ``../shared/data`` rewritten as an R1 trace: a
  ``<think>`` block that restates the problem, walks through the solution paragraph by paragraph with
  R1's "Hmm"/"Wait, let me double-check" moves, then an answer section in one of R1's layouts: a
  numbered list whose steps put display math (``\\[ ... \\]``) and equations on indented lines, a
  section that restates the problem (``**Problem:** ...``), or a short summary; ``\\boxed{}`` last;
* every GSM8K train and test solution the same way (calculator annotations ``<<...>>`` removed; the
  list layout puts ``48 / 2 = 24`` style lines under the steps, indented as Markdown requires);
* the demo world's reference traces (``pipeline.demo.world.trace``), seeded.

Faulty traces: ``--faulty-n`` clean traces (seeded sample), each given one fault aimed at one rule:
a fenced or indented code block (``code_block``), a pasted-back paragraph or a tail loop
(``redundancy``), a Chinese sentence inside, or a switch into another script for the last few words
(``mixed_language``), a wrong final answer (``wrong_answer``), a cut-off reasoning (``truncated``),
a 400-word paragraph (``long_paragraph``). A fault is caught when its rule rejects the trace.

Every trace goes through the real filter worker (``filters.runner``, ``configs/filter/r1.yaml``;
dedup and decontamination are corpus rules and are off here: MATH-500 is, by design, the
decontamination set). Prints, per rule, false rejects / clean traces and caught / faulty, the
examples of each false reject, and the target: false-reject rate <= 0.3% over all rules.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from filters.config import FilterConfig  # noqa: E402
from filters.runner import Verdict, _Worker, process_line  # noqa: E402
from pipeline.config import load_config  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
TARGET_FALSE_REJECT = 0.003
FAULTS = {"fenced_code": "code_block", "indented_code": "code_block", "pasted_paragraph": "redundancy",
          "tail_loop": "redundancy", "han_sentence": "mixed_language", "script_switch_at_end": "mixed_language",
          "wrong_answer": "wrong_answer", "truncated": "truncated", "long_paragraph": "long_paragraph"}
_OPENERS = ("Okay, so I need to solve this problem: {p}", "Alright, let's see. The problem says: {p}",
            "Okay, let me try to figure this out. The question is: {p}", "Let me read the problem again. {p}")
_MOVES = ("", "", "", "Hmm, ", "So ", "Let me think. ", "Okay, ", "Now, ")
_CHECKS = ("Wait, let me double-check that.", "Hmm, let me verify this step again.", "Let me make sure I didn't make a mistake.")
_ASY = re.compile(r"\[asy\].*?\[/asy\]", re.DOTALL)
_INLINE = re.compile(r"(?<!\\)\$([^$]+)(?<!\\)\$")


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z$\\])", text) if s.strip()]


def _reasoning(problem: str, solution: str, answer: str, rng: random.Random) -> str:
    paras = [p.strip() for p in _ASY.sub("", solution).split("\n\n") if p.strip()]
    body = [rng.choice(_OPENERS).format(p=problem.strip())]
    for para in paras:
        for i in range(0, len(_sentences(para)), 3):
            chunk = " ".join(_sentences(para)[i:i + 3])
            body.append(rng.choice(_MOVES) + chunk if chunk[:1].isupper() else chunk)
    short = [s for p in paras[-2:] for s in _sentences(p) if len(s) < 160] or ["The computation is consistent."]
    body.append(f"{rng.choice(_CHECKS)} {rng.choice(short)} Yes, that checks out.")
    body.append(f"So the answer should be ${answer}$.")
    return "\n\n".join(body)


def _list_answer(problem: str, solution: str, answer: str, rng: random.Random) -> str:
    """R1's numbered-list layout: each step's equations on indented lines (display math or plain)."""
    steps = [s for s in _sentences(_ASY.sub("", solution)) if "\\boxed" not in s][:6] or ["We compute directly."]
    indent = rng.choice(("   ", "    "))
    out = [f"To solve the problem, we work through it step by step.\n"]
    for k, s in enumerate(steps, 1):
        out.append(f"{k}. **Step {k}**: {s}")
        for eq in [e for e in _INLINE.findall(s) if 3 <= len(e) <= 80][:2]:
            if rng.random() < 0.5:
                out.append(f"{indent}\\[\n{indent}{eq}\n{indent}\\]")
            else:
                out.append(f"{indent}{eq}")
    out.append(f"\nThus, the final answer is $\\boxed{{{answer}}}$.")
    return "\n".join(out)


def _restating_answer(problem: str, solution: str, answer: str, rng: random.Random) -> str:
    summary = " ".join(_sentences(_ASY.sub("", solution))[-3:])
    return f"**Problem:** {problem.strip()}\n\n**Solution:** {summary}\n\nThe answer is $\\boxed{{{answer}}}$."


def _summary_answer(problem: str, solution: str, answer: str, rng: random.Random) -> str:
    summary = " ".join(_sentences(_ASY.sub("", solution))[-2:])
    return f"{summary}\n\nTherefore, the final answer is $\\boxed{{{answer}}}$."


def to_record(rid: str, problem: str, solution: str, answer: str, rng: random.Random) -> dict:
    """A MATH/GSM8K solution rewritten as an R1 chat record (prompt in R1's math template)."""
    solution = re.sub(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}", r"\1", solution)  # the answer section boxes it
    layout = rng.choice((_list_answer, _list_answer, _restating_answer, _summary_answer))
    response = f"<think>\n{_reasoning(problem, solution, answer, rng)}\n</think>\n\n{layout(problem, solution, answer, rng)}"
    prompt = f"{problem.strip()}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
    return {"prompt_id": rid, "sample_index": 0, "answer": answer, "finish_reason": "stop", "source": rid.split(":")[0],
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]}


def _gsm8k_solution(sol: str) -> str:
    lines = [re.sub(r"<<[^>]*>>", "", ln).strip() for ln in sol.split("\n") if not ln.startswith("####")]
    return " ".join(ln if ln.endswith(".") else ln + "." for ln in lines if ln)


def clean_records(seed: int) -> list[dict]:
    rng = random.Random(seed)
    recs: list[dict] = []
    for name in ("math_train_sample2000.jsonl", "math500.jsonl", "gsm8k_train.jsonl", "gsm8k_test.jsonl"):
        f = SHARED / name
        if not f.is_file():
            continue
        for i, line in enumerate(ln for ln in f.read_text(encoding="utf-8").split("\n") if ln.strip()):
            row = json.loads(line)
            sol = _gsm8k_solution(row["solution"]) if name.startswith("gsm8k") else row["solution"]
            if "$" not in sol and name.startswith("gsm8k"):  # GSM8K arithmetic in math mode, as R1 writes it
                sol = re.sub(r"(\d[\d.,]*(?: ?[-+*/x] ?\d[\d.,]*)+ ?= ?\d[\d.,]*)", r"$\1$", sol)
            recs.append(to_record(f"{name.split('.')[0]}:{i}", row["problem"], sol, str(row["answer"]), rng))
    from pipeline.demo.world import make_splits, render_prompt, trace

    train, _ = make_splits(1000, 10, seed=seed)
    for i, p in enumerate(train):
        recs.append({"prompt_id": f"demo:{i}", "sample_index": 0, "answer": p.answer, "finish_reason": "stop",
                     "source": "demo", "messages": [{"role": "user", "content": render_prompt(p.problem)},
                                                    {"role": "assistant", "content": trace(p)}]})
    return recs


def _response(rec: dict) -> str:
    return rec["messages"][-1]["content"]


def inject(rec: dict, fault: str, rng: random.Random) -> dict:
    """A copy of ``rec`` with one fault (see :data:`FAULTS`)."""
    rec = json.loads(json.dumps(rec))
    think, _, final = _response(rec).partition("</think>")
    paras = think.split("\n\n")
    k = rng.randrange(1, max(2, len(paras)))
    if fault == "fenced_code":
        paras.insert(k, "Let me just compute it:\n```python\nvals = [1, 2, 3]\nprint(sum(v * v for v in vals))\n```")
    elif fault == "indented_code":
        paras.insert(k, "Quick check in code:\n\n    total = 0\n    for k in range(10):\n        total += k\n    print(total)")
    elif fault == "pasted_paragraph":
        longest = max(paras, key=len)
        paras += [longest] * 3
    elif fault == "tail_loop":
        paras.append("Wait, let me check the answer again. " * 40)
    elif fault == "han_sentence":
        paras.insert(k, "我们再仔细检查一下这个结果是否正确，确认每一步都没有错误。")
    elif fault == "script_switch_at_end":
        paras.append(rng.choice(("Итак, ответ", "所以答案是", "答案は", "Значит")))
    elif fault == "wrong_answer":
        final = re.sub(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}", r"\\boxed{\1 + 1}", final)
    elif fault == "truncated":
        rec["finish_reason"] = "length"
        rec["messages"][-1]["content"] = think[: max(20, len(think) // 2)]
        return rec
    elif fault == "long_paragraph":
        paras.insert(k, " ".join(f"term{i} adds to the running total" for i in range(100)))
    rec["messages"][-1]["content"] = "\n\n".join(paras) + "</think>" + final
    return rec


def run(records: list[dict], worker: _Worker) -> list[set[str]]:
    out = []
    for rec in records:
        v = process_line(worker, json.dumps(rec, ensure_ascii=False))
        out.append(set(v.failed) if isinstance(v, Verdict) else {"bad_line"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faulty-n", type=int, default=400, help="clean traces given each fault")
    ap.add_argument("--limit", type=int, default=0, help="use only this many clean traces (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--examples", type=int, default=3, help="false rejects shown per rule")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    cfg = load_config(FilterConfig, str(ROOT / "configs" / "filter" / "r1.yaml"),
                      values={"decontam.enabled": False, "dedup.enabled": False})
    worker = _Worker(cfg.model_dump())
    clean = clean_records(args.seed)
    if args.limit:
        clean = random.Random(args.seed).sample(clean, min(args.limit, len(clean)))
    t = time.perf_counter()
    verdicts = run(clean, worker)
    by_source = Counter(r["source"] for r in clean)
    print(f"clean traces: {len(clean):,} ({dict(by_source)}) in {time.perf_counter() - t:.0f}s")
    fr = Counter(reason for v in verdicts for reason in v)
    any_fr = sum(1 for v in verdicts if v)
    print(f"false rejects, any rule: {any_fr} = {any_fr / len(clean):.2%} (target <= {TARGET_FALSE_REJECT:.1%}: "
          f"{'MEETS' if any_fr / len(clean) <= TARGET_FALSE_REJECT else 'BELOW'})")
    examples = defaultdict(list)
    for rec, v in zip(clean, verdicts):
        for reason in v:
            examples[reason].append(rec["prompt_id"])
    for reason, n in fr.most_common():
        print(f"  {reason:16s} {n:5d} = {n / len(clean):.2%}   e.g. {examples[reason][:args.examples]}")
    rng = random.Random(args.seed + 1)
    sample = rng.sample(clean, min(args.faulty_n, len(clean)))
    caught: dict[str, float] = {}
    print(f"faulty traces: {args.faulty_n} per fault")
    for fault, reason in FAULTS.items():
        got = run([inject(r, fault, rng) for r in sample], worker)
        caught[fault] = sum(reason in v for v in got) / len(got)
        print(f"  {fault:22s} -> {reason:16s} caught {caught[fault]:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "clean": len(clean), "by_source": dict(by_source), "false_reject_any": any_fr / len(clean),
            "false_reject_per_rule": {k: v / len(clean) for k, v in fr.items()}, "catch_rate": caught,
            "examples": {k: v[:20] for k, v in examples.items()}}, indent=2) + "\n")
        from pipeline.plots import barh

        png = barh([f"{f} ({r})" for f, r in FAULTS.items()], [100 * caught[f] for f in FAULTS],
                   Path(args.json).with_suffix(".png"), f"Faults caught by their rule\nclean traces falsely "
                   f"rejected: {any_fr / len(clean):.2%} of {len(clean):,}", "% of faulty traces caught",
                   annotate=[f"{100 * caught[f]:.1f}%" for f in FAULTS])
        print(f"wrote {args.json} and {png}")


if __name__ == "__main__":
    main()
