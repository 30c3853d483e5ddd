"""``distill generate`` on the tiny model: record schema, resume after SIGKILL, sharding, merge, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main as cli_main
from pipeline.config import ConfigError
from pipeline.generate.stage import GenerateConfig, make_backend, run
from pipeline.records import RecordError, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = ["What is 12 + 30?", "Solve for x: 2x + 3 = 11.", "What is 7 * 6?", "Compute 100 - 58.",
            "What is half of 84?", "Simplify \\frac{84}{2}.", "What is 6 squared plus 6?", "Find 21 + 21."]


def _prompts(tmp_path: Path, count: int = len(PROBLEMS)) -> Path:
    path = tmp_path / "prompts.jsonl"
    rows = [{"problem": p, "answer": "42" if i % 3 else None, "source": f"unit{i}"} for i, p in enumerate(PROBLEMS[:count])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _cfg(model: Path, prompts: Path, out: Path, **kw) -> GenerateConfig:
    data = {"model": str(model), "backend": "transformers", "input": {"path": str(prompts)}, "output_dir": str(out),
            "sampling": {"n": 2, "max_tokens": 6}, "transformers": {"batch_size": 8}, "progress": False}
    for key, value in kw.items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return GenerateConfig.model_validate(data)


def _keys(path: Path) -> list[tuple[str, int]]:
    return [(r["prompt_id"], r["sample_index"]) for r in read_jsonl(path)]


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    b = make_backend(_cfg(tiny_model_dir, Path("unused"), Path("unused")))
    yield b
    b.close()


def test_records_follow_the_schema_and_load_in_datasets(tmp_path, tiny_model_dir, backend):
    out = tmp_path / "gen"
    stats = run(_cfg(tiny_model_dir, _prompts(tmp_path), out), backend=backend)
    shard = out / "shard-00000-of-00001.jsonl"
    rows = read_jsonl(shard)
    assert len(rows) == 16 and stats["samples"] == 16 and stats["complete"] and stats["prompts"] == 8
    assert Counter(r["prompt_id"] for r in rows) == Counter({r["prompt_id"]: 2 for r in rows})
    first = rows[0]
    assert list(first) == ["id", "prompt_id", "sample_index", "domain", "kind", "messages", "answer", "finish_reason",
                           "num_tokens", "teacher", "sampling", "meta"]
    assert {r["kind"] for r in rows} == {"reasoning"}
    assert first["messages"][0] == {"role": "user", "content": PROBLEMS[0] + "\nPlease reason step by step, and put "
                                    "your final answer within \\boxed{}."}
    assert first["messages"][1]["role"] == "assistant"
    assert all(r["messages"][1]["content"].startswith("<think>\n") for r in rows)  # force_think
    assert all(r["finish_reason"] in ("stop", "length") and 1 <= r["num_tokens"]["completion"] <= 6 for r in rows)
    assert all(r["num_tokens"]["prompt"] > 10 for r in rows)
    assert first["sampling"] == {"n": 2, "temperature": 0.6, "top_p": 0.95, "max_tokens": 6, "seed": 0}
    assert first["teacher"] == {"model": str(tiny_model_dir), "revision": None}
    assert {r["answer"] for r in rows} == {None, "42"} and first["meta"] == {"source": "unit0"}
    assert len({r["id"] for r in rows}) == 16
    # The JSON schema is stable across lines: datasets loads the shard unchanged.
    import datasets

    ds = datasets.load_dataset("json", data_files=str(shard), split="train")
    assert ds.num_rows == 16 and ds[0]["num_tokens"]["completion"] == first["num_tokens"]["completion"]
    saved = json.loads((out / "stats.json").read_text())
    assert saved["finish_reasons"] == stats["finish_reasons"] and sum(saved["finish_reasons"].values()) == 16
    assert saved["completion_tokens"]["max"] <= 6 and saved["tokens"]["completion"] == sum(
        r["num_tokens"]["completion"] for r in rows)
    assert (out / "lengths.png").stat().st_size > 1000 and (out / "config.yaml").is_file()
    # A rerun of a finished shard generates nothing and needs no engine.
    again = run(_cfg(tiny_model_dir, _prompts(tmp_path), out))
    assert again["this_run"]["samples"] == 0 and _keys(shard) == [(r["prompt_id"], r["sample_index"]) for r in rows]


def test_non_reasoning_samples_keep_the_empty_think_block(tmp_path, tiny_model_dir, backend):
    from filters.base import parse
    from filters.format import FormatConfig, FormatRule

    path = tmp_path / "general.jsonl"
    questions = ["Translate 'good morning' into French.", "Write a haiku about rain.", "Who wrote Hamlet?"]
    path.write_text("".join(json.dumps({"problem": q}) + "\n" for q in questions), encoding="utf-8")
    out = tmp_path / "gen"
    run(_cfg(tiny_model_dir, path, out, kind="non_reasoning", **{"input.default_domain": "general"}), backend=backend)
    rows = read_jsonl(out / "shard-00000-of-00001.jsonl")
    assert len(rows) == 6 and {(r["kind"], r["domain"]) for r in rows} == {("non_reasoning", "general")}
    assert rows[0]["messages"][0]["content"] == (f"{questions[0]}\n\nAnswer directly, without a step-by-step "
                                                 "reasoning process.")
    assert all(r["messages"][1]["content"].startswith("<think>\n\n</think>\n\n") for r in rows)
    answered = [r for r in rows if r["messages"][1]["content"][len("<think>\n\n</think>\n\n"):].strip()
                and r["messages"][1]["content"].count("think>") == 2]
    assert answered and all(FormatRule(FormatConfig()).check(parse(r)) is None for r in answered)
    with pytest.raises(ConfigError, match="kind"):  # a folder of one kind is not resumed as the other
        run(_cfg(tiny_model_dir, path, out, **{"input.default_domain": "general"}), backend=backend)


def test_more_samples_later_generates_only_the_missing_ones(tmp_path, tiny_model_dir, backend):
    out, prompts = tmp_path / "gen", _prompts(tmp_path, 3)
    run(_cfg(tiny_model_dir, prompts, out, **{"sampling.n": 1}), backend=backend)
    before = read_jsonl(out / "shard-00000-of-00001.jsonl")
    stats = run(_cfg(tiny_model_dir, prompts, out, **{"sampling.n": 3}), backend=backend)
    after = read_jsonl(out / "shard-00000-of-00001.jsonl")
    assert stats["this_run"]["samples"] == 6 and after[:3] == before
    assert sorted((r["prompt_id"], r["sample_index"]) for r in after) == sorted(
        (r["prompt_id"], k) for r in before for k in range(3))


def test_resuming_with_other_sampling_settings_is_refused(tmp_path, tiny_model_dir, backend):
    out, prompts = tmp_path / "gen", _prompts(tmp_path, 2)
    run(_cfg(tiny_model_dir, prompts, out), backend=backend)
    with pytest.raises(ConfigError, match=r"config\.yaml: sampling\.temperature: .*0\.6.*0\.7"):
        run(_cfg(tiny_model_dir, prompts, out, **{"sampling.temperature": 0.7}), backend=backend)
    with pytest.raises(ConfigError, match="holds shards of a 1-way split; this run is num_shards=2"):
        run(_cfg(tiny_model_dir, prompts, out, num_shards=2), backend=backend)


def test_shards_partition_the_work_and_merge_joins_them(tmp_path, tiny_model_dir, backend):
    prompts, out = _prompts(tmp_path), tmp_path / "gen"
    for i in range(3):
        stats = run(_cfg(tiny_model_dir, prompts, out, shard_index=i, num_shards=3), backend=backend)
        assert stats["complete"] and (out / f"shard-{i:05d}-of-00003.stats.json").is_file()
    per_shard = [set(_keys(out / f"shard-{i:05d}-of-00003.jsonl")) for i in range(3)]
    assert sum(len(s) for s in per_shard) == 16 and len(set().union(*per_shard)) == 16  # no overlap, all work
    assert sum(1 for s in per_shard if s) >= 2  # the hash split really spreads 8 prompts
    merged = tmp_path / "merged.jsonl"
    assert cli_main(["merge", "--inputs", str(out), "--output", str(merged)]) == 0
    assert sorted(_keys(merged)) == sorted(set().union(*per_shard))
    assert json.loads((tmp_path / "merged.stats.json").read_text())["samples"] == 16
    # A missing shard stops the merge unless explicitly allowed.
    (out / "shard-00001-of-00003.jsonl").rename(tmp_path / "moved.jsonl")
    with pytest.raises(RecordError, match=r"missing shard\(s\) \[1\] of 3"):
        from pipeline.generate.merge import MergeConfig, run as merge_run

        merge_run(MergeConfig(inputs=[str(out)], output=str(tmp_path / "m2.jsonl")))


def test_parquet_output_is_the_only_visible_copy(tmp_path, tiny_model_dir, backend):
    out = tmp_path / "gen"
    run(_cfg(tiny_model_dir, _prompts(tmp_path, 2), out, output_format="parquet"), backend=backend)
    from pipeline.records import expand_inputs, iter_records

    assert [p.name for p in expand_inputs([out])] == ["shard-00000-of-00001.parquet"]
    assert len(list(iter_records(out))) == 4


def test_domain_without_template_is_located(tmp_path, tiny_model_dir):
    path = tmp_path / "p.jsonl"
    path.write_text('{"problem": "a", "dom": "math"}\n{"problem": "b", "dom": "poetry"}\n', encoding="utf-8")
    cfg = _cfg(tiny_model_dir, path, tmp_path / "gen", **{"input.domain_column": "dom"})
    with pytest.raises(RecordError, match=r"p\.jsonl:2: field 'domain': no template for domain 'poetry'"):
        run(cfg)
    assert not (tmp_path / "gen").exists()


@pytest.mark.parametrize("content,message", [
    ('{"problem": "ok"}\n{"problem": "a",,}\n', r"prompts\.jsonl:2: malformed JSON"),
    ('{"problem": "ok"}\n{"question": "a"}\n', r"prompts\.jsonl:2: field 'problem': missing"),
    ('{"problem": "ok"}\n{"problem": ""}\n', r"prompts\.jsonl:2: field 'problem': empty prompt"),
])
def test_bad_input_fails_with_location_and_writes_nothing(tmp_path, tiny_model_dir, capsys, content, message):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(content, encoding="utf-8")
    out = tmp_path / "gen"
    rc = cli_main(["generate", "--model", str(tiny_model_dir), "--backend", "transformers", "--input", str(prompts),
                   "--output", str(out)])
    assert rc == 2 and not out.exists()
    import re

    assert re.search(message, capsys.readouterr().err)


def test_unknown_config_key_fails_before_anything_runs(tmp_path, capsys):
    cfg = tmp_path / "gen.yaml"
    cfg.write_text("model: m\nbackend: transformers\nsampling:\n  max_token: 8\n", encoding="utf-8")
    assert cli_main(["generate", "--config", str(cfg), "--output", str(tmp_path / "gen")]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}" in err and "sampling.max_token: unknown key" in err and not (tmp_path / "gen").exists()


def _wait_for_lines(path: Path, lines: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= lines:
            return
        if proc.poll() is not None:
            raise AssertionError(f"generate exited ({proc.returncode}) before {lines} lines:\n"
                                 + proc.stderr.read().decode()[-2000:])
        time.sleep(0.05)
    raise AssertionError(f"no {lines} lines in {path} after {timeout}s")


def test_sigkill_at_several_points_then_resume_gives_every_sample_once(tmp_path, tiny_model_dir, backend):
    """Real subprocesses killed with SIGKILL (before any write, after 1 batch, mid-run + a torn line)."""
    prompts, out = _prompts(tmp_path), tmp_path / "gen"
    cfg_path = tmp_path / "gen.yaml"
    cfg = _cfg(tiny_model_dir, prompts, out, batch_size=1, **{"sampling.n": 3, "sampling.max_tokens": 12})
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")), encoding="utf-8")
    shard = out / "shard-00000-of-00001.jsonl"
    cmd = [sys.executable, "-m", "pipeline.cli", "generate", "--config", str(cfg_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for kill_after in (0, 3, 12):  # lines on disk when the kill lands (0: during start-up/model load)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kill_after:
            _wait_for_lines(shard, kill_after, proc)
        else:
            time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if kill_after == 12:  # a kill in the middle of write(): half a line at the end of the file
            with open(shard, "ab") as fh:
                fh.write(b'{"id": "torn", "prompt_id": "x", "sample_in')
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    raw = shard.read_bytes()
    assert raw.endswith(b"\n") and b'"torn"' not in raw
    keys = _keys(shard)
    assert len(keys) == len(set(keys)) == 24  # every (prompt, sample) exactly once
    # A per-prompt batch is seeded from the prompt id: the killed-and-resumed corpus equals an uninterrupted one.
    clean = tmp_path / "clean"
    run(_cfg(tiny_model_dir, prompts, clean, batch_size=1, **{"sampling.n": 3, "sampling.max_tokens": 12}),
        backend=backend)
    by_key = {(r["prompt_id"], r["sample_index"]): r["messages"][1]["content"] for r in read_jsonl(shard)}
    ref = {(r["prompt_id"], r["sample_index"]): r["messages"][1]["content"]
           for r in read_jsonl(clean / "shard-00000-of-00001.jsonl")}
    assert by_key == ref


def test_data_parallel_replicas_each_write_their_own_shard(tmp_path, tiny_model_dir):
    from pipeline.generate.replicas import run_data_parallel
    from pipeline.generate.run import compute_stats

    prompts, out = _prompts(tmp_path, 6), tmp_path / "gen"
    cfg = _cfg(tiny_model_dir, prompts, out, **{"sampling.n": 1})
    env_before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT)
    try:
        run_data_parallel(cfg, replicas=2, devices_per_replica=0, expected=6)
    finally:
        os.environ.pop("PYTHONPATH") if env_before is None else os.environ.__setitem__("PYTHONPATH", env_before)
    files = sorted(out.glob("shard-*-of-00002.jsonl"))
    assert [f.name for f in files] == ["shard-00000-of-00002.jsonl", "shard-00001-of-00002.jsonl"]
    stats, _ = compute_stats(files)
    assert stats["samples"] == 6 and stats["prompts"] == 6


def test_shipped_configs_load_and_name_their_command():
    from pipeline.config import load_config

    files = sorted((ROOT / "configs" / "generate").glob("*.yaml"))
    assert {f.name for f in files} >= {"r1_distill_qwen7b_math.yaml", "tiny_cpu.yaml", "openai_server.yaml"}
    for f in files:
        cfg = load_config(GenerateConfig, f)
        assert f.read_text().startswith("#") and f"generate --config configs/generate/{f.name}" in f.read_text(), f
    big = load_config(GenerateConfig, ROOT / "configs" / "generate" / "r1_distill_qwen7b_math.yaml")
    assert (big.sampling.n, big.vllm.tensor_parallel_size, big.vllm.data_parallel_size) == (4, 1, 8)
