"""``distill mix`` at corpus scale: 800K records of ~8 KB (6.4 GB of JSONL) on this machine.

    python benchmarks/mix_scale.py                          # 800K records, baseline on 1/10 of them
    python benchmarks/mix_scale.py --records 40000 --baseline-fraction 1   # a quick look

1. Generates four filtered sources deterministically (seed 0) into ``--work`` (kept if present):
   math 404K, code 130K, science 70K reasoning traces (~9 KB each) and general 200K
   non-reasoning answers (~3.5 KB, empty think block): 7.8 KB per record on average. The
   general source also holds 0.5% exact and 0.5% near copies (one word changed) of math records,
   which the mix must remove across sources.
2. Times ``distill mix`` (a subprocess, ``--workers`` processes) over all of it: wall time, and the
   peak RSS of its whole process tree (sampled every 0.2 s from /proc, summed over processes:
   shared pages count once per process, so this overstates).
3. Times the baseline a user would write first: ``datasets.load_dataset("json", ...,
   keep_in_memory=True)`` of every source, shuffle, sample the same quotas, split, ``to_parquet``.
   It holds everything in memory, so on the full 6.4 GB it would not fit next to the other
   work on a 24 GB machine: it runs on ``--baseline-fraction`` of each source (the mix too, for a
   same-size ratio) and its wall time and RSS are extrapolated linearly to the full size, as printed.

Results go to ``benchmarks/results/mix_scale.json``. The machine is shared: other jobs run at
the same time, so wall times vary from run to run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = {"math": (0.50, "reasoning", 168), "code": (0.1625, "reasoning", 168), "science": (0.0875, "reasoning", 168),
           "general": (0.25, "non_reasoning", 60)}  # name: (share of records, kind, mean sentences)


def _sentences(rng: random.Random, n: int = 50_000) -> list[str]:
    vocab = [f"{a}{b}" for a in ("so", "the", "we", "x", "sum", "root", "then", "it", "check", "term")
             for b in ("", "s", "ed", "ing", "1", "2", "3", "al", "ly", "er")] + [str(i) for i in range(200)]
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(8, 16))) + "." for _ in range(n)]


def _record(name: str, i: int, kind: str, mean: int, rng: random.Random, pool: list[str]) -> dict:
    n = max(3, int(rng.lognormvariate(0, 0.5) * mean * 0.885))
    body = " ".join(pool[rng.randrange(len(pool))] for _ in range(n))
    prompt = f"[{name} {i}] " + " ".join(pool[rng.randrange(len(pool))] for _ in range(3))
    response = (f"<think>\n\n</think>\n\n{body}" if kind == "non_reasoning"
                else f"<think>\n{body}\n</think>\n\nThe answer is \\boxed{{{i % 97}}}.")
    return {"id": f"{name}-{i}-0", "prompt_id": f"{name}-{i}", "sample_index": 0, "domain": name, "kind": kind,
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
            "answer": str(i % 97), "finish_reason": "stop",
            "num_tokens": {"prompt": len(prompt) // 4, "completion": len(response) // 4},
            "teacher": {"model": "deepseek-ai/DeepSeek-R1", "revision": None},
            "sampling": {"n": 1, "temperature": 0.6, "top_p": 0.95, "max_tokens": 32768, "seed": 0},
            "meta": {"row": i}}


def generate(work: Path, records: int) -> dict[str, Path]:
    """The four sources as filter output folders (kept.jsonl), deterministic; reused when complete."""
    rng = random.Random(0)
    pool = _sentences(rng)
    out = {}
    for name, (share, kind, mean) in SOURCES.items():
        folder = work / name
        out[name] = folder
        if (folder / "DONE").is_file():
            continue
        folder.mkdir(parents=True, exist_ok=True)
        r = random.Random(f"0:{name}")
        n = int(records * share)
        with open(folder / "kept.jsonl", "w", encoding="utf-8") as fh:
            for i in range(n):
                if name == "general" and i % 100 in (1, 2):  # an exact / near copy of a math record
                    rec = _record("math", i, "reasoning", 168, random.Random(f"copy:{i}"), pool)
                    if i % 100 == 2:
                        rec["messages"][1]["content"] = rec["messages"][1]["content"].replace(" ", " CHANGED ", 1)
                    rec["id"] = f"general-copy-{i}"
                else:
                    rec = _record(name, i, kind, mean, r, pool)
                fh.write(json.dumps(rec) + "\n")
        if name == "math":  # the originals of general's copies, appended
            with open(folder / "kept.jsonl", "a", encoding="utf-8") as fh:
                for i in range(int(records * SOURCES["general"][0])):
                    if i % 100 in (1, 2):
                        fh.write(json.dumps(_record("math", i, "reasoning", 168, random.Random(f"copy:{i}"), pool)) + "\n")
        (folder / "DONE").write_text("ok\n")
        print(f"generated {name}: {(folder / 'kept.jsonl').stat().st_size / 1e9:.2f} GB", flush=True)
    return out


def subset(sources: dict[str, Path], work: Path, fraction: float) -> dict[str, Path]:
    """The first ``fraction`` of each source's lines (for the in-memory baseline)."""
    if fraction >= 1:
        return sources
    out = {}
    for name, folder in sources.items():
        dst = work / f"subset-{fraction}" / name
        out[name] = dst
        if (dst / "DONE").is_file():
            continue
        dst.mkdir(parents=True, exist_ok=True)
        total = sum(1 for _ in open(folder / "kept.jsonl", "rb"))
        with open(folder / "kept.jsonl", "rb") as src, open(dst / "kept.jsonl", "wb") as fh:
            for k, line in enumerate(src):
                if k >= total * fraction:
                    break
                fh.write(line)
        (dst / "DONE").write_text("ok\n")
    return out


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (from /proc)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next(int(x.split()[1]) for x in fh if x.startswith("VmRSS:")) * 1024
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as fh:
                    stack += [int(c) for c in fh.read().split()]
        except (OSError, StopIteration):
            continue
    return total


def measure(cmd: list[str], log: Path) -> dict:
    """Run ``cmd``; wall seconds and the peak summed RSS of its process tree."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
        peak = [0]

        def sample() -> None:
            while proc.poll() is None:
                peak[0] = max(peak[0], _tree_rss(proc.pid))
                time.sleep(0.2)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        rc = proc.wait()
        th.join()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{cmd[:4]} failed (rc {rc}); see {log}:\n{log.read_text()[-3000:]}")
    return {"wall_s": round(wall, 1), "peak_rss_gb": round(peak[0] / 2**30, 2)}


def mix_yaml(sources: dict[str, Path], out: Path, workers: int) -> Path:
    cfg = {"sources": [{"name": n, "path": str(p)} for n, p in sources.items()], "output_dir": str(out),
           "seed": 0, "validation_fraction": 0.01, "workers": workers, "overwrite": True, "license": "mit"}
    path = out.parent / f"{out.name}.yaml"
    path.write_text(json.dumps(cfg))
    return path


BASELINE = textwrap.dedent("""
    import json, sys, datasets
    srcs, out = json.loads(sys.argv[1]), sys.argv[2]
    parts = []
    for name, path in srcs.items():
        ds = datasets.load_dataset("json", data_files=path + "/kept.jsonl", split="train", keep_in_memory=True)
        ds = ds.shuffle(seed=0, keep_in_memory=True)  # sample the quota (here: all of it)
        parts.append(ds.add_column("source", [name] * len(ds)))
    ds = datasets.concatenate_datasets(parts).shuffle(seed=0, keep_in_memory=True)
    split = ds.train_test_split(test_size=0.01, seed=0, keep_in_memory=True)
    for s, d in split.items():
        d.to_parquet(f"{out}/{s}.parquet")
    print(len(ds))
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=800_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--baseline-fraction", type=float, default=0.1)
    ap.add_argument("--work", default=None, help="folder for the generated sources (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the generated sources and outputs")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="mix_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sources = generate(work, args.records)
    gb = sum((p / "kept.jsonl").stat().st_size for p in sources.values()) / 1e9
    n = sum(1 for p in sources.values() for _ in open(p / "kept.jsonl", "rb"))
    print(f"sources: {n} records, {gb:.2f} GB ({gb * 1e9 / n / 1e3:.1f} KB/record); generated in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    distill = [sys.executable, "-m", "pipeline.cli", "mix", "--config"]
    full = measure(distill + [str(mix_yaml(sources, work / "mix_full", args.workers))], work / "mix_full.log")
    report = json.loads((work / "mix_full" / "mix_report.json").read_text())
    print(f"distill mix, {n} records: {full['wall_s']:.0f} s, peak RSS {full['peak_rss_gb']:.2f} GB "
          f"(exact dup {sum(s['exact_duplicates'] for s in report['sources'].values())}, near dup "
          f"{sum(s['near_duplicates'] for s in report['sources'].values())})", flush=True)
    f = args.baseline_fraction
    small = subset(sources, work, f)
    mix_small = measure(distill + [str(mix_yaml(small, work / "mix_small", args.workers))], work / "mix_small.log")
    (work / "baseline").mkdir(exist_ok=True)
    base = measure([sys.executable, "-c", BASELINE, json.dumps({k: str(v) for k, v in small.items()}),
                    str(work / "baseline")], work / "baseline.log")
    scale = 1 / f
    result = {"records": n, "gb": round(gb, 2), "workers": args.workers, "cores": os.cpu_count(),
              "mix_full": full, "baseline_fraction": f, "mix_subset": mix_small, "baseline_subset": base,
              "baseline_extrapolated": {"wall_s": round(base["wall_s"] * scale, 1),
                                        "peak_rss_gb": round(base["peak_rss_gb"] * scale, 2)},
              "note": "shared 2-core machine (other agents' jobs ran at the same time); baseline extrapolated linearly"}
    print(f"same size ({f:.0%} of the records): mix {mix_small['wall_s']:.0f} s / {mix_small['peak_rss_gb']:.2f} GB, "
          f"datasets in memory {base['wall_s']:.0f} s / {base['peak_rss_gb']:.2f} GB")
    print(f"full size: mix {full['wall_s']:.0f} s / {full['peak_rss_gb']:.2f} GB vs datasets in memory "
          f"~{base['wall_s'] * scale:.0f} s / ~{base['peak_rss_gb'] * scale:.1f} GB (extrapolated x{scale:g}); "
          f"memory ratio {base['peak_rss_gb'] * scale / max(full['peak_rss_gb'], 1e-9):.1f}x")
    print(f"targets: < 600 s ({'met' if full['wall_s'] < 600 else 'MISSED'}), < 4 GB "
          f"({'met' if full['peak_rss_gb'] < 4 else 'MISSED'})")
    out = REPO / "benchmarks" / "results" / "mix_scale.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")
    if not args.keep and not args.work:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
