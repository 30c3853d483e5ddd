"""``distill mix``: three small filtered sources with quotas -> counts, cross-source dedup, the split,
same seed same bytes, SIGKILL and rerun gives the same bytes, ``datasets`` loads it, ``distill sft``
trains from it, an offline push fails before any work, one mix per output."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError
from pipeline.errors import OutputBusy, UserError
from pipeline.locking import output_lock
from pipeline.mix.config import MixConfig
from pipeline.mix.stage import run
from pipeline.records import RecordError, split_files

REPO = Path(__file__).resolve().parents[1]
WORDS = [f"w{i}" for i in range(400)] + ["the", "so", "then", "sum", "is", "we", "check"]
FEATURES = ["id", "messages", "source", "domain", "kind", "teacher", "prompt_id", "answer", "completion_tokens",
            "metadata"]


def record(src: str, i: int, rng: random.Random, kind: str = "reasoning", words: int = 120) -> dict:
    prompt = f"{src} question {i}: " + " ".join(rng.choice(WORDS) for _ in range(15))
    body = " ".join(rng.choice(WORDS) for _ in range(words))
    response = (f"<think>\n\n</think>\n\n{body}" if kind == "non_reasoning"
                else f"<think>\n{body}\n</think>\n\nThe answer is \\boxed{{{i}}}.")
    return {"id": f"{src}-{i}-0", "prompt_id": f"{src}-{i}", "sample_index": 0, "domain": src, "kind": kind,
            "answer": str(i), "teacher": {"model": f"teacher-{src == 'general'}", "revision": None},
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
            "meta": {"row": i}}


def filter_report(n: int, hits: int) -> dict:
    """A report.json as `distill filter` writes it (the fields the card reads)."""
    return {"totals": {"input": n + 10 + hits, "kept": n, "rejected": 10 + hits, "bad_lines": 0},
            "rules": {"format": {"checked": n + 10 + hits, "rejected": 10, "first_failed": 10},
                      "contaminated": {"checked": n + hits, "rejected": hits, "first_failed": hits,
                                       "benchmark_hits": {"math500": hits}}},
            "config": {"decontam": {"n": 13, "benchmarks": ["math500"]}},
            "decontam_benchmarks": [{"name": "math500", "location": "/data/math500.jsonl", "sha256": "ab" * 32,
                                     "sha256_of": "file", "problems": 500}],
            "command": "distill filter --config configs/filter/r1.yaml --inputs runs/gen-math --output runs/f-math",
            "inputs": []}


def make_sources(root: Path, n: int = 120, words: int = 120) -> dict[str, Path]:
    """math / code / general (non-reasoning) sources; code holds an exact copy of math's record 0,
    general a near copy (one word changed) of math's record 1."""
    rng = random.Random(11)
    recs = {"math": [record("math", i, rng, words=words) for i in range(n)],
            "code": [record("code", i, rng, words=words) for i in range(n)],
            "general": [record("general", i, rng, "non_reasoning", words=words) for i in range(n)]}
    copy = json.loads(json.dumps(recs["math"][0]))
    copy["id"], copy["domain"] = "code-copy", "code"
    recs["code"].append(copy)
    near = json.loads(json.dumps(recs["math"][1]))
    text = near["messages"][1]["content"].split(" ")
    text[len(text) // 2] = "CHANGED"
    near["messages"][1]["content"] = " ".join(text)
    near["id"] = "general-near"
    recs["general"].append(near)
    out = {}
    for name, rows in recs.items():
        folder = root / name
        folder.mkdir(parents=True)
        with open(folder / "kept.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
        if name == "math":
            (folder / "report.json").write_text(json.dumps(filter_report(len(rows), hits=3)))
        if name == "code":  # what `distill filter` writes: its config, no command line
            rep = filter_report(len(rows), hits=0)
            del rep["command"]
            rep["config"] = {"inputs": ["runs/gen-code"], "output_dir": "runs/f-code", "decontam": {"n": 13}}
            (folder / "report.json").write_text(json.dumps(rep))
        out[name] = folder
    return out


def mix_cfg(srcs: dict[str, Path], out: Path, **kw) -> MixConfig:
    sources = srcs
    values = dict(sources=[{"name": "math", "path": str(sources["math"]), "count": 100},
                           {"name": "code", "path": str(sources["code"]), "fraction": 0.5},
                           {"name": "general", "path": str(sources["general"])}],
                  output_dir=str(out), seed=3, validation_fraction=0.1, workers=1, license="mit",
                  pretty_name="test corpus")
    values.update(kw)
    return MixConfig(**values)


@pytest.fixture()
def sources(tmp_path) -> dict[str, Path]:
    return make_sources(tmp_path / "src")


def parquet_rows(out: Path, split: str) -> list[dict]:
    import pyarrow.parquet as pq

    return [r for f in split_files(out, split) for r in pq.read_table(f).to_pylist()]


def test_mix_quotas_dedup_split_card_and_datasets_load(tmp_path, sources):
    out = tmp_path / "corpus"
    report = run(mix_cfg(sources, out, jsonl=True))
    s = report["sources"]
    assert s["code"]["exact_duplicates"] == 1 and s["code"]["duplicate_of_source"]["exact"] == {"math": 1}
    assert s["general"]["near_duplicates"] == 1 and s["general"]["duplicate_of_source"]["near"] == {"math": 1}
    assert s["math"]["exact_duplicates"] == s["math"]["near_duplicates"] == 0
    assert (s["math"]["selected"], s["code"]["selected"], s["general"]["selected"]) == (100, 60, 120)
    assert (s["math"]["validation"], s["code"]["validation"], s["general"]["validation"]) == (10, 6, 12)
    train, val = parquet_rows(out, "train"), parquet_rows(out, "validation")
    assert (len(train), len(val)) == (252, 28) == (report["splits"]["train"], report["splits"]["validation"])
    ids = [r["id"] for r in train + val]
    assert len(set(ids)) == len(ids)
    assert "code/code-copy" not in ids and "general/general-near" not in ids
    assert {r["source"] for r in val} == {"math", "code", "general"}
    gen = [r for r in train if r["source"] == "general"]
    assert all(r["kind"] == "non_reasoning" and r["messages"][-1]["content"].startswith("<think>\n\n</think>")
               for r in gen)
    assert json.loads(gen[0]["metadata"])["meta"]["row"] >= 0
    assert [r["id"] for r in train] != sorted(r["id"] for r in train)  # shuffled
    import datasets

    ds = datasets.load_dataset(str(out))
    assert set(ds) == {"train", "validation"} and ds["train"].num_rows == 252
    assert list(ds["train"].features) == FEATURES
    assert ds["train"].features["messages"].feature["content"].dtype == "string"
    files = {sp: [str(f) for f in split_files(out, sp)] for sp in ("train", "validation")}
    assert datasets.load_dataset("parquet", data_files=files)["validation"].num_rows == 28
    jl = [json.loads(x) for f in sorted((out / "jsonl").glob("train-*.jsonl")) for x in f.read_text().splitlines()]
    assert [r["id"] for r in jl] == [r["id"] for r in train]
    card = (out / "README.md").read_text()
    head = yaml.safe_load(card.split("---\n")[1])
    assert head["license"] == "mit" and head["size_categories"] == ["n<1K"]
    assert head["configs"][0]["data_files"][0] == {"split": "train", "path": "data/train-*.parquet"}
    assert head["dataset_info"]["splits"][0] == {"name": "train", "num_bytes": head["dataset_info"]["splits"][0]["num_bytes"],
                                                "num_examples": 252}
    assert "math500 (500 problems, sha256 abababababab) for shared 13-word spans; 3 of" in card and "-10 format" in card
    assert "distill filter --config configs/filter/r1.yaml" in card and "distill mix --config mix_config.yaml" in card
    assert "distill filter --config filter_configs/code.yaml" in card
    assert yaml.safe_load((out / "filter_configs" / "code.yaml").read_text())["output_dir"] == "runs/f-code"
    assert (out / "lengths_reasoning.png").stat().st_size > 0 and (out / "lengths_non_reasoning.png").is_file()
    with pytest.raises(RecordError, match="no 'test' split"):
        split_files(out, "test")


def _bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.suffix in (".parquet", ".jsonl", ".md")}


def test_same_seed_same_bytes_other_seed_other_order(tmp_path, sources):
    a = _bytes(Path(run(mix_cfg(sources, tmp_path / "a", shard_mb=1, row_group_rows=50))["output_dir"]))
    b = _bytes(Path(run(mix_cfg(sources, tmp_path / "b", shard_mb=1, row_group_rows=50, workers=2))["output_dir"]))
    assert a == b and len(a) >= 3
    run(mix_cfg(sources, tmp_path / "c", seed=4))
    assert [r["id"] for r in parquet_rows(tmp_path / "c", "train")] != [r["id"] for r in parquet_rows(tmp_path / "a", "train")]
    again = run(mix_cfg(sources, tmp_path / "a", shard_mb=1, row_group_rows=50))  # finished: nothing to do
    assert _bytes(tmp_path / "a") == a and again["splits"]["train"] == 252
    with pytest.raises(ConfigError, match="different config"):
        run(mix_cfg(sources, tmp_path / "a", seed=9))


def _mix_process(cfg_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "mix", "--config", str(cfg_path)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen, path_glob: tuple[Path, str], timeout: float = 120) -> None:
    folder, pattern = path_glob
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if folder.is_dir() and any(folder.glob(pattern)):
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.005)
    raise AssertionError(f"the mix ended before {folder}/{pattern} appeared: {proc.stderr.read().decode()[-2000:]}")


def test_sigkill_mid_mix_then_rerun_gives_the_same_bytes(tmp_path):
    sources = make_sources(tmp_path / "src", n=1500, words=200)
    ref = mix_cfg(sources, tmp_path / "ref", shard_mb=1, row_group_rows=100)
    run(ref)
    out = tmp_path / "killed"
    cfg_path = tmp_path / "mix.yaml"
    cfg_path.write_text(yaml.safe_dump(ref.model_copy(update={"output_dir": str(out)}).model_dump(mode="json")))
    work = out / ".partial"
    _kill_when(_mix_process(cfg_path), (work, "scan-0.npz"))  # in pass 1 (math scanned, code not)
    assert not (out / "mix_report.json").exists() and not (work / "plan.npz").exists()
    _kill_when(_mix_process(cfg_path), (work / "data", "*.parquet"))  # in pass 2 (a shard written)
    assert not (out / "mix_report.json").exists() and len(list((work / "spill").glob("*.bin"))) == 3 * 128
    proc = _mix_process(cfg_path)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    assert _bytes(out) == _bytes(tmp_path / "ref") and not work.exists()


def test_distill_sft_trains_from_the_mix(tmp_path, tiny_model_dir):
    from pipeline.train.data import load_conversations
    from pipeline.train.sft import SFTConfig, run as run_sft

    sources = make_sources(tmp_path / "src", words=12)
    out = tmp_path / "corpus"
    splits = run(mix_cfg(sources, out))["splits"]
    assert sum(1 for _ in load_conversations([str(out)], "train")) == splits["train"] > 200
    assert sum(1 for _ in load_conversations([str(out)], "validation")) == splits["validation"] > 20
    summary = run_sft(SFTConfig(model=str(tiny_model_dir), data=[str(out)], output_dir=str(tmp_path / "sft"),
                                max_seq_len=512, micro_batch_size=2, grad_accum=1, max_steps=2, dtype="fp32",
                                progress=False, log_every=1))
    assert summary["steps"] == 2 and Path(summary["model_dir"], "model.safetensors").is_file()


def test_offline_push_fails_before_any_work(tmp_path, sources):
    out = tmp_path / "corpus"
    cfg = mix_cfg(sources, out, hub={"repo_id": "me/corpus", "token_env": "MIX_TEST_TOKEN"})
    os.environ["MIX_TEST_TOKEN"] = "hf_not_a_real_token"
    try:
        with pytest.raises(UserError, match="cannot publish to me/corpus.*nothing was mixed"):
            run(cfg)  # conftest sets HF_HUB_OFFLINE=1: the Hub is unreachable
    finally:
        del os.environ["MIX_TEST_TOKEN"]
    assert not out.exists()


def test_one_mix_per_output_and_bad_quotas(tmp_path, sources):
    out = tmp_path / "corpus"
    with output_lock(out, "mix"):
        with pytest.raises(OutputBusy):
            run(mix_cfg(sources, out))
    with pytest.raises(UserError, match="math: quota 500, 120 distinct records"):
        run(mix_cfg(sources, tmp_path / "strict", strict_quotas=True,
                    sources=[{"name": "math", "path": str(sources["math"]), "count": 500}]))
    with pytest.raises(ValueError, match="give one of count, fraction, share"):
        mix_cfg(sources, out, sources=[{"name": "m", "path": "x", "count": 5, "fraction": 0.5}])
    with pytest.raises(ValueError, match="need `total`"):
        mix_cfg(sources, out, sources=[{"name": "m", "path": "x", "share": 0.5}])


def test_shipped_mix_config_loads_and_names_its_command():
    from pipeline.config import load_config

    path = REPO / "configs" / "mix" / "r1_800k.yaml"
    cfg = load_config(MixConfig, path)
    assert sum(s.count for s in cfg.sources) == 800_000 and cfg.sources[-1].name == "general"
    assert "distill mix --config configs/mix/r1_800k.yaml" in path.read_text()


def test_minhash_sees_case_and_whitespace_copies_as_equal_and_estimates_jaccard():
    from pipeline.mix.minhash import batch_minhash, jaccard

    rng = random.Random(5)
    words = [rng.choice(WORDS) for _ in range(300)]
    text = " ".join(words)
    edited = " ".join(words[:150] + ["EDITED"] + words[151:])
    sig = batch_minhash([text, "  " + text.upper().replace(" ", "\n "), edited, " ".join(reversed(words)), ""], 128, 5)
    assert (sig[0] == sig[1]).all()  # the exact pass misses these copies; the near pass cannot
    j = jaccard(sig[[0, 0, 0, 4]], sig[[2, 3, 4, 4]])
    shingles = [{" ".join(w[i:i + 5]) for i in range(len(w) - 4)} for w in (words, edited.split())]
    true = len(shingles[0] & shingles[1]) / len(shingles[0] | shingles[1])
    assert abs(j[0] - true) < 0.06 and j[1] < 0.2 and j[2] == 0.0 and j[3] == 0.0


def test_a_parquet_source_mixes_like_jsonl(tmp_path, sources):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.records import read_jsonl

    rows = read_jsonl(sources["code"] / "kept.jsonl")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "code.parquet")
    a = run(mix_cfg(sources, tmp_path / "a"))
    b = run(mix_cfg(sources, tmp_path / "b", sources=[
        {"name": "math", "path": str(sources["math"]), "count": 100},
        {"name": "code", "path": str(tmp_path / "code.parquet"), "fraction": 0.5},
        {"name": "general", "path": str(sources["general"])}]))
    assert a["sources"] == b["sources"]
    ids = [[r["id"] for r in parquet_rows(tmp_path / x, "train")] for x in ("a", "b")]
    assert ids[0] == ids[1]
