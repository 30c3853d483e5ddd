"""The filter stage against hostile input and hostile runs (issue 11: defects 4, 5, 6 and 9).

* a second run on a busy output folder is refused with one line and exit 2 (two real processes);
* a lone surrogate anywhere in a record, or invalid UTF-8 bytes in a line, is a bad line
  (quarantined with its file, line and field; or a clean error), never a traceback or an altered record;
* a worker process that dies ends the run with an error in bounded time, never a hang;
* nonsensical thresholds are refused at config load, naming the key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from filters.stage import run
from pipeline.config import ConfigError, load_config
from pipeline.records import RecordError, read_jsonl
from test_filter_stage import R1, REPO, cfg_for, corpus, write

ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "filter", "--config", str(R1), *args]


# --------------------------------------------------------------------------- defect 4: one writer per output

def test_second_concurrent_run_on_one_output_is_refused(tmp_path):
    recs = corpus(12) * 40  # ~700 records: a second or more of work after the lock, so the first run is mid-run below
    inp = write(tmp_path / "gen.jsonl", recs)
    out = tmp_path / "out"
    args = ["--inputs", str(inp), "--output", str(out), "--workers", "1", "--set", "decontam.enabled=false"]
    first = subprocess.Popen(_cli(*args), cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = out / ".lock"
    try:
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline, "first run never took the lock"
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGSTOP)  # hold it mid-run, lock taken, whatever the machine's speed
        second = subprocess.run(_cli(*args), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2
    err = second.stderr.strip().splitlines()
    assert len(err) == 1 and "another filter run is writing here" in err[0] and str(out) in err[0], second.stderr
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    report = json.loads((out / "report.json").read_text())
    kept = read_jsonl(out / "kept.jsonl")
    assert len(kept) == report["totals"]["kept"] and report["totals"]["input"] == len(recs)
    assert len({(r["prompt_id"], r["sample_index"]) for r in kept}) == len(kept)  # nothing written twice


# --------------------------------------------------------------------------- defects 5 and 6: bad text

SURROGATE_LINES = [  # valid JSON, each with one unpaired surrogate escape, and the field that holds it
    ('{"prompt_id": "s1", "messages": [{"role": "user", "content": "q"}, '
     '{"role": "assistant", "content": "<think>x\\ud800</think> \\\\boxed{16}"}], "answer": "16"}', "messages[1].content"),
    ('{"prompt_id": "s2", "messages": [{"role": "user", "content": "q"}, '
     '{"role": "assistant", "content": "<think>x</think> \\\\boxed{16}"}], "answer": "\\udfff"}', "answer"),
    ('{"prompt_id": "s3", "meta": {"\\udc00key": 1}, "messages": [{"role": "user", "content": "q"}, '
     '{"role": "assistant", "content": "<think>x</think> \\\\boxed{16}"}]}', "meta.\\udc00key"),
]


def _hostile_input(tmp_path: Path) -> tuple[Path, list[dict]]:
    good = corpus(3)
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in good]
    lines.insert(1, SURROGATE_LINES[0][0].encode())
    lines.insert(3, SURROGATE_LINES[1][0].encode())
    lines.append(SURROGATE_LINES[2][0].encode())
    bad_utf8 = json.dumps(good[0], ensure_ascii=False).replace("Problem 0", "Problem \udcff0").encode("utf-8", "surrogateescape")
    lines.append(bad_utf8)  # a raw 0xff byte inside a string: not UTF-8
    path = tmp_path / "gen.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, good


@pytest.mark.parametrize("workers", [1, 2])
def test_lone_surrogates_and_invalid_utf8_are_quarantined(tmp_path, workers):
    inp, good = _hostile_input(tmp_path)
    report = run(cfg_for(inp, tmp_path / "out", on_bad_line="quarantine", workers=workers, chunk_size=2))
    out = tmp_path / "out"
    bad = read_jsonl(out / "bad_lines.jsonl")
    assert [(b["line"], b["field"]) for b in bad] == [(2, "messages[1].content"), (4, "answer"), (len(good) + 3, "meta.\\udc00key"),
                                                      (len(good) + 4, None)]
    assert all(b["file"] == str(inp) for b in bad)
    at = inp.read_bytes().splitlines()[-1].index(b"\xff") + 1
    assert "lone surrogate" in bad[0]["error"] and bad[3]["error"] == f"invalid UTF-8 (byte 0xff at byte {at} of the line)"
    assert bad[3]["raw"] == inp.read_bytes().splitlines()[-1].decode("utf-8", "backslashreplace")  # \\xff shown
    assert report["totals"]["bad_lines"] == 4 and report["totals"]["input"] == len(good)
    kept = (out / "kept.jsonl").read_bytes().decode("utf-8")  # strict: nothing invalid reached the outputs
    assert "\ufffd" not in kept and len(kept.splitlines()) == report["totals"]["kept"]


def test_invalid_utf8_stops_the_run_naming_file_and_line(tmp_path):
    inp, good = _hostile_input(tmp_path)
    lines = inp.read_bytes().splitlines()
    inp.write_bytes(b"\n".join([lines[0], lines[-1]]) + b"\n")  # a good line, then the invalid UTF-8 one
    with pytest.raises(RecordError) as exc:
        run(cfg_for(inp, tmp_path / "out"))
    assert str(exc.value).startswith(f"{inp}:2") and "invalid UTF-8" in str(exc.value)
    inp.write_bytes(lines[0] + b"\n" + SURROGATE_LINES[1][0].encode() + b"\n")
    done = subprocess.run(_cli("--inputs", str(inp), "--output", str(tmp_path / "o2"), "--workers", "1",
                               "--set", "decontam.enabled=false"), cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{inp}:2" in done.stderr and "answer" in done.stderr and "lone surrogate" in done.stderr


# --------------------------------------------------------------------------- defect 5: a dead worker

DIE = """
import os, signal, sys
import filters.runner as runner

real = runner._process_chunk

def dying(lines):  # the worker that gets the marked record is killed, as the OOM killer would
    if any(b"KILL-ME" in raw for raw in lines):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(lines)

runner._process_chunk = dying  # forked workers inherit it
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("at", [0, 30])  # dies on the first chunk (the pool breaks while chunks are still sent) or mid-run
def test_dead_worker_ends_the_run_with_an_error_not_a_hang(tmp_path, at):
    recs = corpus(12) * 4
    recs[at] = {**recs[at], "prompt_id": "KILL-ME"}
    inp = write(tmp_path / "gen.jsonl", recs)
    cmd = [sys.executable, "-c", DIE, "filter", "--config", str(R1), "--inputs", str(inp), "--output",
           str(tmp_path / "out"), "--workers", "2", "--set", "chunk_size=4", "--set", "decontam.enabled=false"]
    t0 = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr
    assert "a worker process died" in done.stderr and "Traceback" not in done.stderr
    assert time.monotonic() - t0 < 170
    assert not (tmp_path / "out" / "report.json").exists()


# --------------------------------------------------------------------------- defect 9: thresholds

@pytest.mark.parametrize("key,value", [
    ("workers", -1), ("chunk_size", 0), ("length.max_completion_tokens", -1), ("length.min_reasoning_tokens", -5),
    ("language.max_minority_share", 1.5), ("redundancy.max_repeated_line_frac", -0.1),
    ("redundancy.min_compression_ratio", 2), ("dedup.threshold", 1.2), ("dedup.max_per_prompt", 0),
    ("paragraphs.max_words", 0), ("answer.timeout_s", 0), ("decontam.n", 0), ("code_blocks.min_indented_lines", -1),
])
def test_nonsensical_thresholds_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError) as exc:
        load_config(type(cfg_for(Path("x"), Path("y"))), R1, values={key: value})
    assert f"{key}: " in str(exc.value)


def test_min_above_max_length_is_refused():
    with pytest.raises(ConfigError) as exc:
        load_config(type(cfg_for(Path("x"), Path("y"))), R1,
                    values={"length.min_completion_tokens": 100, "length.max_completion_tokens": 50})
    assert "length: " in str(exc.value) and "min_completion_tokens (100) > max_completion_tokens (50)" in str(exc.value)


def test_empty_input_is_one_line_exit_2_and_writes_no_report(tmp_path):
    inp = tmp_path / "gen.jsonl"
    inp.write_text("\n  \n")
    done = subprocess.run(_cli("--inputs", str(inp), "--output", str(tmp_path / "out"), "--workers", "1"),
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "hold no records" in done.stderr and str(inp) in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.strip().splitlines()[-1].startswith("distill filter: error: ")
    assert not (tmp_path / "out" / "report.json").exists() and not (tmp_path / "out" / ".partial").exists()


def test_cli_negative_workers_is_one_line_exit_2(tmp_path):
    inp = write(tmp_path / "gen.jsonl", corpus(1))
    done = subprocess.run(_cli("--inputs", str(inp), "--output", str(tmp_path / "out"), "--workers", "-1"),
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "workers" in done.stderr and len(done.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- kills and foreign checkpoints

def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_output(tmp_path):
    recs = [json.loads(json.dumps(r)) for r in corpus(12) * 60]
    for i, r in enumerate(recs):  # distinct samples, so dedup keeps many and its index is in the checkpoint
        r["sample_index"] = i
        r["messages"][1]["content"] += f" (sample {i % 97})"
    inp = write(tmp_path / "gen.jsonl", recs)
    run(cfg_for(inp, tmp_path / "ref"))  # the uninterrupted reference, in-process
    args = ["--inputs", str(inp), "--workers", "2", "--set", "decontam.enabled=false", "--set", "checkpoint_every=100",
            "--set", "chunk_size=8"]
    out = tmp_path / "out"
    first = subprocess.Popen(_cli(*args, "--output", str(out)), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = out / ".partial" / "checkpoint.pkl"
    deadline = time.monotonic() + 120
    while not ckpt.exists():
        assert first.poll() is None and time.monotonic() < deadline, "no checkpoint before the run ended"
        time.sleep(0.01)
    os.killpg(first.pid, signal.SIGKILL)  # the run and its workers, mid-run
    first.wait(timeout=60)
    assert not (out / "report.json").exists()
    again = subprocess.run(_cli(*args, "--output", str(out)), cwd=REPO, env=ENV, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr  # it picked up the killed run's checkpoint, not a fresh start
    for name in ("kept.jsonl", "rejected.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "ref" / name).read_bytes()
    got, want = (json.loads((d / "report.json").read_text()) for d in (out, tmp_path / "ref"))
    assert got["totals"] == want["totals"] and got["rules"] == want["rules"]


@pytest.mark.parametrize("content", [b"not a pickle", b"\x80\x04}\x94\x8c\x0bfingerprint\x94\x8c\x01x\x94s."])
def test_unreadable_or_foreign_checkpoint_is_a_clear_error(tmp_path, content):
    inp = write(tmp_path / "gen.jsonl", corpus(3))
    (tmp_path / "out" / ".partial").mkdir(parents=True)
    (tmp_path / "out" / ".partial" / "checkpoint.pkl").write_bytes(content)
    with pytest.raises(ConfigError) as exc:
        run(cfg_for(inp, tmp_path / "out"))
    assert "checkpoint" in str(exc.value) and "--overwrite" in str(exc.value)
