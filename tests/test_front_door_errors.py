"""What a user gets wrong, or what the machine does to them, ends in one line naming the path, model,
URL or key, with exit code 2: no traceback. After a full disk the rerun resumes exactly.

Filesystem faults are real: a small tmpfs (mounted by this test; root only, else skipped) is made
read-only or filled up. Endpoints are real HTTP servers on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.records import read_jsonl


def one_error_line(capsys, *expected: str) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.startswith("distill ")]
    assert "Traceback" not in err and len(lines) == 1, err
    for e in expected:
        assert e in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(size_kb)``: a fresh tmpfs of that size (remount with ``remount(path, opts)``)."""
    mounts = []

    def make(size_kb: int) -> Path:
        path = tmp_path / f"fs{len(mounts)}"
        path.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                             capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}); needs root")
        mounts.append(path)
        return path

    yield make
    for path in reversed(mounts):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(path)], check=True)


def _prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"p{i:03d}", "problem": f"What is {i} plus {i}?", "answer": str(2 * i)})
                            + "\n" for i in range(n)))
    return path


def _traces(path: Path, n: int = 4) -> Path:
    path.write_text("".join(json.dumps({"id": f"t{i}", "messages": [
        {"role": "user", "content": f"What is {i}+{i}?"},
        {"role": "assistant", "content": f"<think>\n{i}+{i}={2 * i}\n</think>\n\\boxed{{{2 * i}}}"}],
        "answer": str(2 * i)}) + "\n" for i in range(n)))
    return path


def _generate_args(model: Path | str, prompts: Path, out: Path, *extra: str) -> list[str]:
    return ["generate", "--model", str(model), "--backend", "transformers", "--input", str(prompts),
            "--output", str(out), "--max-tokens", "8", "--set", "progress=false", "--set", "transformers.device=cpu",
            *extra]


def _train_yaml(tmp_path: Path, model: Path | str, **extra: str) -> Path:
    cfg = tmp_path / f"train-{uuid.uuid4().hex[:6]}.yaml"
    lines = [f"model: {model}", f"data: [{_traces(tmp_path / 'traces.jsonl')}]", f"output_dir: {tmp_path / 'run'}",
             "max_steps: 1", "progress: false", "max_seq_len: 128", "micro_batch_size: 2"]
    cfg.write_text("\n".join(lines + [f"{k}: {v}" for k, v in extra.items()]) + "\n")
    return cfg


# --------------------------------------------------------------------------- models (defects 7 and 8)

@pytest.fixture(scope="module")
def no_tokenizer_model(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model's config and weights, without its tokenizer files."""
    out = tmp_path_factory.mktemp("no_tokenizer")
    for f in tiny_model_dir.iterdir():
        if f.name in ("config.json", "generation_config.json") or f.suffix == ".safetensors":
            shutil.copy(f, out / f.name)
    return out


def test_model_folder_without_tokenizer_is_refused_up_front(tmp_path, capsys, no_tokenizer_model, tiny_model_dir):
    msg = f"{no_tokenizer_model}: no tokenizer in this folder"
    prompts = _prompts(tmp_path / "p.jsonl", 2)
    assert main(_generate_args(no_tokenizer_model, prompts, tmp_path / "gen")) == 2
    one_error_line(capsys, "distill generate: error: model", msg)
    assert not (tmp_path / "gen").exists()
    assert main(["sft", "--config", str(_train_yaml(tmp_path, no_tokenizer_model))]) == 2
    one_error_line(capsys, "distill sft: error: model", msg)
    assert main(["kd", "--config", str(_train_yaml(tmp_path, tiny_model_dir, teacher=str(no_tokenizer_model)))]) == 2
    one_error_line(capsys, "distill kd: error: teacher", msg)
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    assert main(["eval", "--model", str(no_tokenizer_model), "--backend", "transformers", "--output", str(tmp_path / "ev"),
                 "--set", f"benchmarks=[{{name: b, path: {bench}}}]"]) == 2
    one_error_line(capsys, "distill eval: error: model", msg)
    assert not (tmp_path / "ev" / "eval_run.json").exists()
    # a separate tokenizer folder makes the same weights usable
    assert main(["sft", "check", "--config", str(_train_yaml(tmp_path, no_tokenizer_model,
                                                              tokenizer=str(tiny_model_dir)))]) == 0


def test_missing_model_path_is_named(tmp_path, capsys):
    missing = tmp_path / "runs" / "sft" / "final"
    assert main(_generate_args(missing, _prompts(tmp_path / "p.jsonl", 2), tmp_path / "gen")) == 2
    one_error_line(capsys, f"distill generate: error: model {missing}: no such folder")
    assert main(["sft", "--config", str(_train_yaml(tmp_path, missing))]) == 2
    one_error_line(capsys, f"distill sft: error: model {missing}: no such folder")


def test_kd_tokenizer_mismatch_is_one_line(tmp_path, capsys, tiny_model_dir):
    from transformers import AutoTokenizer

    from pipeline.tiny import build_model, train_tokenizer

    other = tmp_path / "other_teacher"
    tok = train_tokenizer(["a completely different corpus of words"] * 20, vocab_size=400)
    tok.save_pretrained(other)
    build_model(AutoTokenizer.from_pretrained(other), hidden_size=64, num_layers=1, num_heads=2, seed=0).save_pretrained(other)
    assert main(["kd", "--config", str(_train_yaml(tmp_path, tiny_model_dir, teacher=str(other)))]) == 2
    one_error_line(capsys, "distill kd: error: teacher and student tokenizers differ", f"teacher {other}",
                   f"student {tiny_model_dir}")


# --------------------------------------------------------------------------- endpoints (defects 7 and 9)

class _EchoingServer:
    """Answers every request with HTTP ``status`` and an error body that echoes the Authorization header."""

    def __init__(self, status: int = 401):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.dumps({"error": {"message": f"invalid key in header: {self.headers.get('Authorization')}"}})
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


def _openai_args(base_url: str, prompts: Path, out: Path) -> list[str]:
    return ["generate", "--model", "served-model", "--backend", "openai", "--input", str(prompts), "--output", str(out),
            "--set", f"openai.base_url={base_url}", "--set", "openai.max_retries=0", "--set", "progress=false"]


def test_http_401_names_url_and_key_variable_and_never_the_key(tmp_path, capsys, monkeypatch):
    secret = "sk-front-door-" + uuid.uuid4().hex
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    server = _EchoingServer()
    try:
        assert main(_openai_args(server.base_url, _prompts(tmp_path / "p.jsonl", 2), tmp_path / "gen")) == 2
    finally:
        server.httpd.shutdown()
    line = one_error_line(capsys, f"{server.base_url}/chat/completions: HTTP 401", "the key in $OPENAI_API_KEY",
                          "Bearer ***")
    assert secret not in line
    for f in tmp_path.rglob("*"):
        assert not f.is_file() or secret.encode() not in f.read_bytes(), f


def test_key_echoed_in_retried_errors_is_redacted_in_logs_too(tmp_path, capsys, caplog, monkeypatch):
    secret = "sk-front-door-" + uuid.uuid4().hex
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    server = _EchoingServer(status=503)
    try:
        argv = _openai_args(server.base_url, _prompts(tmp_path / "p.jsonl", 1), tmp_path / "gen")
        assert main(argv + ["--set", "openai.max_retries=2", "--set", "openai.retry_backoff_s=0"]) == 2
    finally:
        server.httpd.shutdown()
    line = one_error_line(capsys, "giving up after 3 attempts", "HTTP 503", "Bearer ***")
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 2 and all("Bearer ***" in m for m in retries)
    assert secret not in line and not any(secret in r.getMessage() for r in caplog.records)


def test_refused_connection_names_the_url(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    assert main(_openai_args(url, _prompts(tmp_path / "p.jsonl", 2), tmp_path / "gen")) == 2
    one_error_line(capsys, f"{url}/chat/completions: giving up after 1 attempts", "ConnectError")


# --------------------------------------------------------------------------- filesystem (defect 7)

def _generate_folder(tmp_path: Path, shard_text: str) -> Path:
    """A finished one-shard generate folder holding ``shard_text``."""
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "shard-00000-of-00001.jsonl").write_text(shard_text)
    (gen / "stats.json").write_text(json.dumps({"complete": True}))
    return gen


def test_read_only_folder(tmp_path, tmpfs, capsys):
    ro = tmpfs(256)
    remount(ro, "ro")
    inp = _traces(tmp_path / "responses.jsonl")
    assert main(["eval", "score", "--input", str(inp), "--output", str(ro / "scored")]) == 2
    one_error_line(capsys, "distill eval: error:", str(ro / "scored"), "Read-only file system")
    gen = _generate_folder(tmp_path, json.dumps({"prompt_id": "a", "sample_index": 0}) + "\n")
    assert main(["merge", "--inputs", str(gen), "--output", str(ro / "merged.jsonl")]) == 2
    one_error_line(capsys, "distill merge: error:", str(ro), "Read-only file system")


def test_output_that_is_a_folder(tmp_path, capsys):
    gen = _generate_folder(tmp_path, json.dumps({"prompt_id": "a", "sample_index": 0}) + "\n")
    folder = tmp_path / "merged"
    folder.mkdir()
    assert main(["merge", "--inputs", str(gen), "--output", str(folder)]) == 2
    one_error_line(capsys, f"distill merge: error: {folder}: is a folder; this output must be a file path")


def test_disk_full_then_rerun_resumes_exactly(tmp_path, tmpfs, capsys, tiny_model_dir):
    """A shard that fills the disk stops with one line; after space is freed the same command finishes,
    every (prompt, sample) exactly once."""
    prompts = _prompts(tmp_path / "p.jsonl", 40)
    fs = tmpfs(16)  # 4 pages: config.yaml, the lock, and a little room for the shard
    out = fs / "gen"
    args = _generate_args(tiny_model_dir, prompts, out, "--n", "2", "--set", "batch_size=4", "--set", "input.id_column=id")
    assert main(args) == 2
    one_error_line(capsys, f"distill generate: error: {out / 'shard-00000-of-00001.jsonl'}: cannot write",
                   "No space left on device", "rerun the same command to resume")
    shard = out / "shard-00000-of-00001.jsonl"
    assert 0 < shard.read_bytes().count(b"\n") < 80  # some batches landed (the last line may be torn)
    remount(fs, "size=4m")
    assert main(args) == 0
    recs = read_jsonl(shard)
    keys = [(r["prompt_id"], r["sample_index"]) for r in recs]
    assert len(keys) == len(set(keys)) == 80
    assert set(keys) == {(f"p{i:03d}", k) for i in range(40) for k in range(2)}
    assert json.loads((out / "stats.json").read_text())["complete"] is True


def test_sft_disk_full_is_one_line(tmp_path, tmpfs, capsys, tiny_model_dir):
    """Weights are written by safetensors, which wraps the OSError in its own exception."""
    fs = tmpfs(512)
    cfg = _train_yaml(tmp_path, tiny_model_dir)
    cfg.write_text(cfg.read_text().replace(f"output_dir: {tmp_path / 'run'}", f"output_dir: {fs / 'run'}"))
    assert main(["sft", "--config", str(cfg)]) == 2
    one_error_line(capsys, f"distill sft: error: {fs / 'run'}: cannot write (No space left on device)")


# --------------------------------------------------------------------------- values and empty inputs (defect 9)

@pytest.mark.parametrize("argv, key", [
    (["eval", "--model", "m", "--workers", "-1"], "grading_workers"),
    (["eval", "score", "--input", "x.jsonl", "--pass-k", "0"], "pass_k"),
    (["eval", "score", "--input", "x.jsonl", "--pass-k", "1", "-4"], "pass_k"),
    (["generate", "--model", "m", "--input", "x.jsonl", "--n", "0"], "sampling.n"),
])
def test_bad_values_are_rejected_at_config_load(argv, key, capsys):
    assert main(argv) == 2
    one_error_line(capsys, f"{key}:")


def test_empty_inputs_are_an_error_and_leave_no_empty_output(tmp_path, capsys, tiny_model_dir):
    """One policy in every stage: an input without records is an error (exit 2, one line), never a
    silent success, because it means an upstream step went wrong."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"model: {tiny_model_dir}\ndata: [{empty}]\noutput_dir: {tmp_path / 'run'}\nprogress: false\n")
    assert main(["sft", "--config", str(cfg)]) == 2
    one_error_line(capsys, "no usable samples")
    assert main(["eval", "score", "--input", str(empty), "--output", str(tmp_path / "sc")]) == 2
    one_error_line(capsys, f"{empty}: no responses to score")
    assert not (tmp_path / "sc" / "scored.jsonl").exists()
    gen = _generate_folder(tmp_path, "")
    assert main(["merge", "--inputs", str(gen), "--output", str(tmp_path / "m.jsonl")]) == 2
    one_error_line(capsys, "hold no samples; nothing to merge")
    assert not (tmp_path / "m.jsonl").exists()
    assert main(["generate", "--model", "m", "--backend", "openai", "--input", str(empty),
                 "--output", str(tmp_path / "g")]) == 2
    one_error_line(capsys, f"{empty}: no prompts found")


def test_merge_error_leaves_no_empty_output(tmp_path, capsys):
    gen = _generate_folder(tmp_path, "{broken\n")
    assert main(["merge", "--inputs", str(gen), "--output", str(tmp_path / "m.jsonl")]) == 2
    one_error_line(capsys, "shard-00000-of-00001.jsonl:1: malformed JSON")
    assert not (tmp_path / "m.jsonl").exists()
