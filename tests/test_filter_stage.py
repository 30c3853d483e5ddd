"""The filter stage end to end: nothing lost, counts, bad lines, dedup, charts, resume and atomicity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import filters.runner as runner
from filters.config import FilterConfig
from filters.stage import run
from pipeline.config import ConfigError, load_config
from pipeline.records import RecordError, read_jsonl

REPO = Path(__file__).resolve().parents[1]
R1 = REPO / "configs/filter/r1.yaml"


def _rec(i: int, reasoning: str, final: str, answer: str = "16", prompt_id: str | None = None, **extra) -> dict:
    return {"prompt_id": prompt_id or f"p{i}", "sample_index": i,
            "messages": [{"role": "user", "content": f"Problem {i}: what is the sum of the first four odd numbers?"},
                         {"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\n{final}"}],
            "answer": answer, "finish_reason": "stop", **extra}


WORDS = ["carefully", "pairwise", "directly", "slowly", "twice", "again", "backwards", "mentally", "in pairs",
         "by grouping", "column-wise", "stepwise"]


def _reasoning(i: int) -> str:
    """Distinct short traces (different wording per i, as independent samples would be)."""
    a, b, c = (WORDS[(i * k + k) % len(WORDS)] for k in (1, 5, 7))
    return (f"Case {i}. The first four odd numbers are 1, 3, 5 and 7; I will add them {a}.\n\n"
            f"Adding {b}: $1 + 3 = 4$, $4 + 5 = 9$ and $9 + 7 = 16$. Checking {c} with variant {i * 7 + 3} of "
            f"the formula $n^2$ at $n = {4}$ also gives 16, so attempt {i} is consistent.")


def corpus(n_clean: int = 12) -> list[dict]:
    recs = [_rec(i, _reasoning(i), "The answer is $\\boxed{16}$.") for i in range(n_clean)]
    recs.append(_rec(100, _reasoning(100), "The answer is $\\boxed{15}$."))  # wrong_answer
    recs.append(_rec(101, _reasoning(101) + "\n\n```python\nprint(16)\n```", "$\\boxed{16}$"))  # code_block
    # fails two rules at once: code block and wrong answer
    recs.append(_rec(102, _reasoning(102) + "\n\n```\nx = 1\n```", "$\\boxed{17}$"))
    recs.append(dict(recs[0]))  # exact duplicate of record 0
    recs.append(_rec(103, _reasoning(103), "The answer is $\\boxed{16}$.", domain="science", answer=None))
    recs.append(_rec(104, _reasoning(104), "The answer is $\\boxed{16}$.", answer=None))  # math, no reference
    return recs


def write(path: Path, recs: list[dict], bad_at: int | None = None) -> Path:
    lines = [json.dumps(r, ensure_ascii=False) for r in recs]
    if bad_at is not None:
        lines.insert(bad_at, '{"messages": [broken')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def cfg_for(inp: Path, out: Path, **values) -> FilterConfig:
    base = {"inputs": [str(inp)], "output_dir": str(out), "workers": 1, "decontam.enabled": False}
    base.update(values)
    return load_config(FilterConfig, R1, values=base)


def test_stage_outputs_and_counts(tmp_path):
    recs = corpus()
    inp = write(tmp_path / "gen.jsonl", recs)
    report = run(cfg_for(inp, tmp_path / "out"))
    out = tmp_path / "out"
    kept, rejected = read_jsonl(out / "kept.jsonl"), read_jsonl(out / "rejected.jsonl")
    assert len(kept) + len(rejected) == len(recs) == report["totals"]["input"]
    assert report["totals"]["kept"] == len(kept) == 14  # 12 clean + science + math without reference
    assert kept[0] == recs[0]  # kept records unchanged
    by_id = {r["sample_index"]: r for r in rejected}
    assert by_id[100]["reject_reasons"] == ["wrong_answer"]
    assert by_id[101]["reject_reasons"] == ["code_block"]
    assert by_id[102]["reject_reasons"] == ["code_block", "wrong_answer"]  # every rule it failed
    assert set(by_id[102]["reject_details"]) == {"code_block", "wrong_answer"}
    dup = [r for r in rejected if r["reject_reasons"] == ["duplicate"]]
    assert len(dup) == 1 and {k: v for k, v in dup[0].items() if not k.startswith("reject_")} == recs[0]
    rules = report["rules"]
    assert rules["wrong_answer"]["rejected"] == 2 and rules["wrong_answer"]["rejected_only"] == 1
    assert rules["code_block"]["rejected"] == 2 and rules["code_block"]["rejected_only"] == 1
    assert rules["code_block"]["checked"] == len(recs)  # math and science are both in its scope
    assert rules["duplicate"]["checked"] == len(recs) - 3  # dedup sees only records passing the other rules
    # math and science are both graded; one record of each has no reference
    assert rules["wrong_answer"]["no_reference"] == 2 and rules["wrong_answer"]["statuses"]["wrong"] == 2
    assert rules["duplicate"]["rejected"] == 1
    assert report["domains"]["science"] == {"input": 1, "kept": 1, "rejected": 0, "by_rule": {}}
    assert (out / "funnel.png").stat().st_size > 1000
    assert "| wrong_answer |" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["totals"] == report["totals"]
    assert not (out / ".partial").exists() and not (out / "bad_lines.jsonl").exists()


def test_bad_line_stops_with_file_and_line(tmp_path):
    inp = write(tmp_path / "gen.jsonl", corpus(3), bad_at=2)
    with pytest.raises(RecordError) as exc:
        run(cfg_for(inp, tmp_path / "out"))
    assert f"{inp}:3" in str(exc.value)
    assert not (tmp_path / "out" / "report.json").exists() and not (tmp_path / "out" / "kept.jsonl").exists()


def test_bad_line_quarantine(tmp_path):
    recs = corpus(3)
    inp = write(tmp_path / "gen.jsonl", recs, bad_at=2)
    report = run(cfg_for(inp, tmp_path / "out", on_bad_line="quarantine"))
    bad = read_jsonl(tmp_path / "out" / "bad_lines.jsonl")
    assert report["totals"]["bad_lines"] == 1 and len(bad) == 1 and bad[0]["line"] == 3
    assert report["totals"]["input"] == len(recs)


def test_near_duplicates_and_prompt_cap(tmp_path):
    base = _reasoning(5) + "\n\n" + " ".join(f"step {k} keeps the running total consistent with the invariant"
                                             for k in range(30))
    near = base.replace("step 29", "step twenty-nine")
    recs = [_rec(0, base, "$\\boxed{16}$", prompt_id="q"), _rec(1, near, "$\\boxed{16}$", prompt_id="q"),
            _rec(2, _reasoning(2), "$\\boxed{16}$", prompt_id="q"), _rec(3, _reasoning(3), "$\\boxed{16}$", prompt_id="q")]
    for r in recs:  # one prompt, four samples
        r["messages"][0]["content"] = "What is the sum of the first four odd numbers?"
    inp = write(tmp_path / "gen.jsonl", recs)
    report = run(cfg_for(inp, tmp_path / "out", **{"dedup.max_per_prompt": 2, "paragraphs.max_words": 1000}))
    rejected = {r["sample_index"]: r["reject_reasons"] for r in read_jsonl(tmp_path / "out" / "rejected.jsonl")}
    assert rejected == {1: ["near_duplicate"], 3: ["prompt_cap"]}
    assert report["rules"]["near_duplicate"]["rejected"] == 1 and report["rules"]["prompt_cap"]["rejected"] == 1


def test_parallel_workers_match_in_process(tmp_path):
    recs = corpus(40)
    inp = write(tmp_path / "gen.jsonl", recs)
    run(cfg_for(inp, tmp_path / "one"))
    run(cfg_for(inp, tmp_path / "two", workers=2, chunk_size=4))
    for name in ("kept.jsonl", "rejected.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()


def test_interrupted_run_resumes_without_loss_or_duplicates(tmp_path, monkeypatch):
    recs = corpus(40)
    inp = write(tmp_path / "gen.jsonl", recs)
    ref = tmp_path / "ref"
    run(cfg_for(inp, ref))

    out = tmp_path / "out"
    real_add = runner.Tally.add
    calls = {"n": 0}

    def dying_add(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 23:  # after checkpoints at 8 and 16 records, mid-way through the next batch
            raise KeyboardInterrupt
        return real_add(self, *a, **k)

    monkeypatch.setattr(runner.Tally, "add", dying_add)
    with pytest.raises(KeyboardInterrupt):
        run(cfg_for(out_inp := inp, out, checkpoint_every=8, chunk_size=4))
    monkeypatch.setattr(runner.Tally, "add", real_add)
    # an interrupted run never looks complete
    assert not (out / "report.json").exists() and not (out / "kept.jsonl").exists()
    assert (out / ".partial" / "checkpoint.pkl").exists()
    partial = (out / ".partial" / "kept.jsonl").read_bytes()
    assert partial.count(b"\n") > 0

    report = run(cfg_for(out_inp, out, checkpoint_every=8, chunk_size=4))
    for name in ("kept.jsonl", "rejected.jsonl"):
        assert (out / name).read_bytes() == (ref / name).read_bytes()
    ref_report = json.loads((ref / "report.json").read_text())
    assert report["totals"] == ref_report["totals"] and report["rules"] == ref_report["rules"]


def test_finished_run_is_not_redone_and_conflicts_are_refused(tmp_path):
    inp = write(tmp_path / "gen.jsonl", corpus(3))
    out = tmp_path / "out"
    first = run(cfg_for(inp, out))
    mtime = (out / "kept.jsonl").stat().st_mtime_ns
    assert run(cfg_for(inp, out)) == first and (out / "kept.jsonl").stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="different config"):
        run(cfg_for(inp, out, **{"paragraphs.max_words": 50}))
    again = run(cfg_for(inp, out, overwrite=True, **{"paragraphs.max_words": 50}))
    assert again["totals"]["input"] == first["totals"]["input"]


def test_cli_filter_and_bad_line_exit_code(tmp_path):
    inp = write(tmp_path / "gen.jsonl", corpus(3))
    cmd = [sys.executable, "-m", "pipeline.cli", "filter", "--config", str(R1), "--inputs", str(tmp_path),
           "--output", str(tmp_path / "out"), "--workers", "1", "--set", "decontam.enabled=false"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "kept" in done.stdout and (tmp_path / "out" / "report.json").exists()
    write(inp, corpus(3), bad_at=1)
    cmd[cmd.index(str(tmp_path / "out"))] = str(tmp_path / "out2")
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and f"{inp}:2" in done.stderr
