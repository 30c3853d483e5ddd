"""What each white-box tool costs per optimizer step, against SFT measured in the same run.

    python benchmarks/white_box_cost.py                    # CPU, a small offline pair, 12 steps each
    python benchmarks/white_box_cost.py --steps 30 --student-hidden 256 --teacher-hidden 384

Builds a student and a teacher offline (``pipeline.tiny``: random weights, same tokenizer) and a
synthetic chat corpus, then trains the same steps, seed and batch with:

* ``sft``: cross-entropy only (``distill sft``);
* ``kd_live``: logit KD, teacher forward every step (``distill kd``);
* ``kd_cache``: logit KD from the top-k cache (the cache's one-off build time reported apart);
* ``kd_features``: logit KD + hidden states at 2 mapped layers (live teacher);
* ``gkd``: on-policy, every micro-batch sampled by the student (``lmbda 1``) then scored.

It prints seconds per step and the ratio to ``sft`` and writes ``benchmarks/results/white_box_cost.json``.
Quality is not measured here (random models); the demo's Pass@1 rows are
(``distill demo --set 'student.white_box=[features, on_policy]'``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _pair(tmp: Path, s_hidden: int, t_hidden: int) -> tuple[Path, Path]:
    from pipeline.tiny import build_model, train_tokenizer

    tok = train_tokenizer(vocab_size=1000)
    out = []
    for name, hidden, layers in (("student", s_hidden, 2), ("teacher", t_hidden, 4)):
        path = tmp / name
        tok.save_pretrained(path)
        build_model(tok, hidden_size=hidden, num_layers=layers, num_heads=4, seed=len(name)).save_pretrained(path)
        out.append(path)
    return out[0], out[1]


def _corpus(path: Path, n: int) -> Path:
    rows = []
    for i in range(n):
        a, b = 100 + 7 * i, 250 + 3 * i
        rows.append({"id": f"s{i}", "messages": [
            {"role": "user", "content": f"What is {a} + {b}?"},
            {"role": "assistant", "content": f"<think>\n{a} + {b} = {a + b}.\n</think>\n\n\\boxed{{{a + b}}}"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _variants(common: dict, tmp: Path) -> dict[str, tuple[str, dict]]:
    return {"sft": ("sft", {}),
            "kd_live": ("kd", {}),
            "kd_cache": ("kd", {"teacher_cache": str(tmp / "tc"), "cache": {"k": 32}}),
            "kd_features": ("kd", {"features": {"num_layers": 2}}),
            "gkd": ("kd", {"on_policy": {"lmbda": 1.0, "max_new_tokens": 32}})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--student-hidden", type=int, default=128)
    ap.add_argument("--teacher-hidden", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "white_box_cost.json"))
    args = ap.parse_args()
    from pipeline.train.kd import KDConfig, build_teacher_cache, run as kd_run
    from pipeline.train.sft import SFTConfig, run as sft_run

    tmp = Path(tempfile.mkdtemp(prefix="white_box_cost-"))
    student, teacher = _pair(tmp, args.student_hidden, args.teacher_hidden)
    data = _corpus(tmp / "kept.jsonl", 64)
    common = dict(model=str(student), data=[str(data)], max_seq_len=128, micro_batch_size=8, max_steps=args.steps,
                  lr=1e-3, warmup_ratio=0.0, dtype="fp32", seed=0, progress=False, packing=False)
    results = {}
    for name, (stage, extra) in _variants(common, tmp).items():
        values = {**common, "output_dir": str(tmp / name), **extra}
        if stage == "sft":
            summary = sft_run(SFTConfig(**values))
        else:
            cfg = KDConfig(**values, teacher=str(teacher), kd_alpha=0.5)
            if cfg.teacher_cache:
                t0 = time.perf_counter()
                build_teacher_cache(cfg)
                results["kd_cache_build_s"] = round(time.perf_counter() - t0, 2)
            summary = kd_run(cfg)
        results[name] = {"s_per_step": summary["elapsed_s"] / args.steps, "final_loss": summary["final_loss"]}
    base = results["sft"]["s_per_step"]
    for name, r in results.items():
        if isinstance(r, dict):
            r["x_sft"] = round(r["s_per_step"] / base, 2)
            print(f"{name:12s} {r['s_per_step']:.3f} s/step  {r['x_sft']:.2f}x sft")
    print(f"kd_cache build (once): {results['kd_cache_build_s']} s")
    report = {"steps": args.steps, "student_hidden": args.student_hidden, "teacher_hidden": args.teacher_hidden,
              "device": "cpu", "results": results}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
