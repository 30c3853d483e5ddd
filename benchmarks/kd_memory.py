"""Peak memory and time of the fused chunked KD loss against the naive full-logits KD loss.

    python benchmarks/kd_memory.py                       # vocab 151,936; 1K, 2K, 4K, 8K trained tokens
    python benchmarks/kd_memory.py --lengths 512 1024 --vocab 32000 --device cuda

Both losses start from the same inputs, the final hidden states of student and teacher for N
trained tokens and both ``lm_head`` weights (Qwen2.5 vocabulary 151,936), and run forward +
backward of ``alpha * T^2 * KL(teacher || student) + (1 - alpha) * CE``:

* naive: ``logits = hidden @ W.T`` for all N tokens at once, fp32 softmax, ``F.kl_div`` (what a
  plain ``model(...).logits`` KD loop does);
* fused: :func:`pipeline.train.losses.fused_linear_kd`, ``--chunk`` tokens of logits at a time,
  gradients computed in forward so backward keeps no logits.

Each measurement runs in a fresh subprocess. Peak memory is, on CPU, the rise of the process's
peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs`` after the inputs are built) over its
RSS before the loss; on CUDA, ``torch.cuda.max_memory_allocated`` over the allocation before.
A naive run that would not fit in the memory available now is not started (it would take the
machine down with it); its peak is then extrapolated linearly from the measured lengths and
marked ``extrapolated``. The two losses' values must agree to 1e-4 (relative) wherever both ran;
the script asserts it. Writes ``benchmarks/results/kd_memory.json`` and a PNG next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _mem_available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def child(args: argparse.Namespace) -> dict:
    """One measurement (run in its own process): build inputs, run the loss, report peak and time."""
    import torch

    from pipeline.train.losses import KDSpec, fused_linear_kd, naive_kd_from_logits

    torch.manual_seed(0)
    dev = torch.device(args.device)
    n, v, h, ht = args.n, args.vocab, args.hidden, args.teacher_hidden
    hidden = (torch.randn(n, h, device=dev)).requires_grad_(True)
    weight = (torch.randn(v, h, device=dev) * h**-0.5).requires_grad_(True)
    t_hidden = torch.randn(n, ht, device=dev)
    t_weight = torch.randn(v, ht, device=dev) * ht**-0.5
    targets = torch.randint(0, v, (n,), device=dev)
    spec = KDSpec(kind=args.kind, temperature=2.0, alpha=0.5, chunk_size=args.chunk)

    def run_once():
        if args.mode == "naive":
            with torch.no_grad():
                teacher_logits = t_hidden @ t_weight.t()
            out = naive_kd_from_logits(hidden @ weight.t(), teacher_logits, targets, spec)
        else:
            def teacher(a, b):
                return t_hidden[a:b] @ t_weight.t()

            out = fused_linear_kd(hidden, weight, targets, teacher, spec)
        out.loss_sum.backward()
        return out

    if dev.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _status_kb("VmRSS") * 1024
    start = time.perf_counter()
    out = run_once()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _status_kb("VmHWM") * 1024 - base
    seconds = time.perf_counter() - start
    return {"mode": args.mode, "n": n, "peak_bytes": int(peak), "seconds": seconds,
            "loss": out.loss_sum.item(), "kd": out.kd_sum.item(), "ce": out.ce_sum.item(),
            "grad_norm": float(hidden.grad.norm())}


def _measure(args: argparse.Namespace, mode: str, n: int) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--n", str(n), "--vocab", str(args.vocab),
           "--hidden", str(args.hidden), "--teacher-hidden", str(args.teacher_hidden), "--chunk", str(args.chunk),
           "--kind", args.kind, "--device", args.device]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"measurement {mode} n={n} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _extrapolate(points: list[tuple[int, int]], n: int) -> int:
    """Least-squares line through (n, peak) points (peak is linear in n for the naive loss)."""
    if len(points) == 1:
        (n0, p0), = points
        return int(p0 * n / n0)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return int(my + slope * (n - mx))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--hidden", type=int, default=64, help="student hidden size (small so the CPU copes)")
    ap.add_argument("--teacher-hidden", type=int, default=96)
    ap.add_argument("--chunk", type=int, default=1024, help="trained tokens per chunk (config kd_chunk_size)")
    ap.add_argument("--kind", default="forward_kl", choices=["forward_kl", "reverse_kl", "jsd"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--headroom", type=float, default=0.7, help="start a naive run only if its estimate is below "
                    "this share of MemAvailable (CPU)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "kd_memory.json")
    ap.add_argument("--child", choices=["naive", "fused"], help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        args.mode = args.child
        print(json.dumps(child(args)))
        return 0

    gib = 2**30
    rows, naive_points = [], []
    print(f"KD loss memory: vocab {args.vocab:,}, hidden {args.hidden} (teacher {args.teacher_hidden}), "
          f"chunk {args.chunk}, {args.kind}, device {args.device}")
    for n in sorted(args.lengths):
        fused = _measure(args, "fused", n)
        # naive needs ~7 fp32 [n, vocab] buffers at its peak; a measured smaller length gives a better guess
        estimate = (_extrapolate(naive_points, n) if naive_points else 7 * n * args.vocab * 4) * 1.15
        avail = _mem_available_bytes() if args.device == "cpu" else None
        if avail is not None and estimate > args.headroom * avail:
            naive = {"mode": "naive", "n": n, "peak_bytes": _extrapolate(naive_points, n) if naive_points else None,
                     "seconds": None, "loss": None, "extrapolated": True,
                     "why": f"needs ~{estimate / gib:.1f} GiB, {avail / gib:.1f} GiB available"}
        else:
            naive = _measure(args, "naive", n)
            naive_points.append((n, naive["peak_bytes"]))
            rel = abs(fused["loss"] - naive["loss"]) / max(1.0, abs(naive["loss"]))
            assert rel <= 1e-4, f"n={n}: fused loss {fused['loss']} != naive {naive['loss']} (rel {rel:.2e})"
            naive["rel_diff"] = rel
        ratio = fused["peak_bytes"] / naive["peak_bytes"] if naive["peak_bytes"] else None
        rows.append({"n": n, "naive": naive, "fused": fused, "peak_ratio": ratio})
        nv = naive["peak_bytes"] / gib if naive["peak_bytes"] else float("nan")
        tag = " (extrapolated: " + naive["why"] + ")" if naive.get("extrapolated") else ""
        speed = (f", time fused/naive {fused['seconds'] / naive['seconds']:.2f}x "
                 f"({fused['seconds']:.2f}s vs {naive['seconds']:.2f}s)") if naive.get("seconds") else ""
        same = f", loss equal (rel diff {naive['rel_diff']:.1e})" if "rel_diff" in naive else ""
        print(f"  {n:>6} tokens: peak fused {fused['peak_bytes'] / gib:6.2f} GiB vs naive {nv:6.2f} GiB"
              f" -> ratio {ratio:.3f}{tag}{speed}{same}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"vocab": args.vocab, "hidden": args.hidden, "teacher_hidden": args.teacher_hidden, "chunk": args.chunk,
              "kind": args.kind, "device": args.device, "rows": rows}
    args.out.write_text(json.dumps(report, indent=2))
    _plot(rows, args.out.with_suffix(".png"))
    last = rows[-1]
    target = "MET" if last["peak_ratio"] is not None and last["peak_ratio"] < 0.25 else "NOT MET"
    print(f"target (fused peak < 25% of naive at {last['n']} tokens): {target}; report {args.out}")
    return 0


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gib = 2**30
    fig, ax = plt.subplots(figsize=(6, 4))
    ns = [r["n"] for r in rows]
    ax.plot(ns, [r["fused"]["peak_bytes"] / gib for r in rows], "o-", label="fused chunked")
    ax.plot(ns, [(r["naive"]["peak_bytes"] or float("nan")) / gib for r in rows], "s--", label="naive full logits")
    for r in rows:
        if r["naive"].get("extrapolated") and r["naive"]["peak_bytes"]:
            ax.annotate("extrapolated", (r["n"], r["naive"]["peak_bytes"] / gib), fontsize=8)
    ax.set_xlabel("trained tokens")
    ax.set_ylabel("peak memory of loss fwd+bwd (GiB)")
    ax.set_title("KD loss peak memory, vocab 151,936")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
