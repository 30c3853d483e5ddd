"""The ``openai`` backend against a real OpenAI-compatible HTTP server on 127.0.0.1.

The server is a small threaded stdlib server with the transformers backend behind it: it renders
the messages with the model's chat template, generates, and answers in the chat-completions shape.
It can fail requests with 500/429 (to test retries) and split R1-style reasoning into
``reasoning_content`` the way vLLM's ``deepseek_r1`` reasoning parser does.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.chat import render_generation_prompt
from pipeline.generate.backends.base import PromptInput
from pipeline.generate.backends.openai import OpenAIBackend, OpenAIError, merge_reasoning
from pipeline.generate.config import SamplingConfig
from pipeline.generate.stage import GenerateConfig, make_backend, run
from pipeline.records import read_jsonl

SECRET = "sk-test-0123456789abcdef-never-log-me"


class ChatServer:
    """``POST /v1/chat/completions`` over a TransformersBackend; knobs: ``fail`` list, ``reasoning``."""

    def __init__(self, backend, key: str | None = None):
        self.backend, self.key = backend, key
        self.fail: list[int] = []      # statuses to answer with, one per request, before serving normally
        self.reasoning = False         # split the response at </think> into reasoning_content
        self.bodies: list[dict] = []
        self.statuses: list[int] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, payload = server.handle(self.path, self.headers.get("Authorization"), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def handle(self, path: str, auth: str | None, body: dict) -> tuple[int, dict]:
        with self._lock:
            self.bodies.append(body)
            if self.fail:
                status = self.fail.pop(0)
                self.statuses.append(status)
                return status, {"error": {"message": f"injected {status}"}}
            if path != "/v1/chat/completions":
                return 404, {"error": {"message": "not found"}}
            if self.key and auth != f"Bearer {self.key}":
                return 401, {"error": {"message": "bad api key"}}
            messages = body["messages"]
            prefill = ""
            if body.get("continue_final_message"):
                prefill, messages = messages[-1]["content"], messages[:-1]
            text, forced = render_generation_prompt(self.backend.tokenizer, messages, force_think=self.reasoning)
            text += prefill
            sampling = SamplingConfig(n=1, temperature=body["temperature"], top_p=body["top_p"],
                                      max_tokens=body["max_tokens"], seed=body.get("seed", 0))
            [[c]] = self.backend.generate([PromptInput(messages=messages, text=text, seed=body.get("seed"))], sampling)
            self.statuses.append(200)
        message = {"role": "assistant", "content": c.text}
        if self.reasoning:  # vLLM deepseek_r1 parser: up to </think> is reasoning; no </think> -> all reasoning
            head, sep, tail = c.text.partition("</think>")
            message = {"role": "assistant", "reasoning_content": head, "content": tail.lstrip() if sep else None}
        return 200, {"id": "cmpl-1", "object": "chat.completion", "model": body["model"],
                     "choices": [{"index": 0, "message": message, "finish_reason": c.finish_reason}],
                     "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                               "total_tokens": c.prompt_tokens + c.completion_tokens}}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    local = make_backend(GenerateConfig(model=str(tiny_model_dir), backend="transformers"))
    srv = ChatServer(local, key=SECRET)
    yield srv
    srv.close()
    local.close()


@pytest.fixture(autouse=True)
def _reset(server, monkeypatch):
    server.fail, server.reasoning, server.bodies, server.statuses = [], False, [], []
    monkeypatch.setenv("TEST_DISTILL_KEY", SECRET)


def _prompts(tmp_path: Path, count: int = 4) -> Path:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"problem": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                            for i in range(count)), encoding="utf-8")
    return path


def _cfg(server, tiny_model_dir, tmp_path, **openai) -> GenerateConfig:
    return GenerateConfig.model_validate({
        "model": str(tiny_model_dir), "backend": "openai", "input": {"path": str(_prompts(tmp_path))},
        "output_dir": str(tmp_path / "gen"), "sampling": {"n": 2, "max_tokens": 8}, "progress": False,
        "openai": {"base_url": server.base_url, "api_key_env": "TEST_DISTILL_KEY", "concurrency": 4,
                   "retry_backoff_s": 0.01, **openai}})


def test_generates_every_sample_with_usage_and_seeds(server, tiny_model_dir, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    stats = run(_cfg(server, tiny_model_dir, tmp_path))
    rows = read_jsonl(tmp_path / "gen" / "shard-00000-of-00001.jsonl")
    assert len(rows) == 8 and stats["complete"] and server.statuses == [200] * 8
    assert all(r["num_tokens"]["prompt"] > 10 and 1 <= r["num_tokens"]["completion"] <= 8 for r in rows)
    assert all(r["finish_reason"] in ("stop", "length") for r in rows)
    assert all(b["n"] == 1 and b["temperature"] == 0.6 and b["top_p"] == 0.95 for b in server.bodies)
    assert len({b["seed"] for b in server.bodies}) == 8  # one seed per (prompt, sample)
    assert all(b["messages"][-1]["content"].endswith("within \\boxed{}.") for b in server.bodies)
    # The key went only into the Authorization header: not in records, stats, config, logs.
    for f in (tmp_path / "gen").iterdir():
        if f.suffix in (".jsonl", ".json", ".yaml"):
            assert SECRET not in f.read_text(encoding="utf-8"), f
    assert SECRET not in caplog.text


def test_5xx_and_429_are_retried(server, tiny_model_dir, tmp_path, caplog):
    server.fail = [500, 503, 429, 502]
    stats = run(_cfg(server, tiny_model_dir, tmp_path, concurrency=1))
    assert server.statuses[:4] == [500, 503, 429, 502] and server.statuses.count(200) == 8
    assert stats["this_run"]["retries"] == 4 and stats["samples"] == 8
    assert "retry 1/8" in caplog.text and SECRET not in caplog.text


def test_retries_exhausted_and_client_errors_fail_loudly(server, tiny_model_dir, tmp_path):
    server.fail = [500] * 3
    backend = OpenAIBackend(str(tiny_model_dir), server.base_url, api_key_env="TEST_DISTILL_KEY", concurrency=1,
                            max_retries=2, retry_backoff_s=0.0)
    one = [PromptInput(messages=[{"role": "user", "content": "hi"}])]
    with pytest.raises(OpenAIError, match=r"giving up after 3 attempts; last error: HTTP 500: .*injected 500"):
        backend.generate(one, SamplingConfig(max_tokens=4))
    server.fail = [400]
    with pytest.raises(OpenAIError, match="HTTP 400"):  # not retried
        backend.generate(one, SamplingConfig(max_tokens=4))
    assert server.statuses == [500, 500, 500, 400]
    backend.close()


def test_wrong_key_is_not_retried_and_not_echoed(server, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_DISTILL_KEY", "sk-wrong-key-9999")
    with pytest.raises(OpenAIError) as err:
        run(_cfg(server, tiny_model_dir, tmp_path))
    assert "HTTP 401" in str(err.value) and "sk-wrong-key-9999" not in str(err.value)
    assert not (tmp_path / "gen" / "shard-00000-of-00001.jsonl").exists()  # nothing half-written, no empty file


def test_reasoning_content_is_merged_back_as_think_block(server, tiny_model_dir, tmp_path):
    server.reasoning = True
    run(_cfg(server, tiny_model_dir, tmp_path))
    rows = read_jsonl(tmp_path / "gen" / "shard-00000-of-00001.jsonl")
    assert len(rows) == 8
    for r in rows:
        response = r["messages"][-1]["content"]
        assert response.startswith("<think>\n") and "\n</think>\n\n" in response


def test_prefill_think_sends_the_forced_opener(server, tiny_model_dir, tmp_path):
    run(_cfg(server, tiny_model_dir, tmp_path, prefill_think=True))
    assert all(b["messages"][-1] == {"role": "assistant", "content": "<think>\n"} and b["continue_final_message"]
               for b in server.bodies)
    rows = read_jsonl(tmp_path / "gen" / "shard-00000-of-00001.jsonl")
    assert all(r["messages"][-1]["content"].startswith("<think>\n") for r in rows)
    assert [m["role"] for m in rows[0]["messages"]] == ["user", "assistant"]


def test_merge_reasoning_rules():
    assert merge_reasoning("step 1", "so \\boxed{2}") == "<think>\nstep 1\n</think>\n\nso \\boxed{2}"
    assert merge_reasoning(None, "plain answer") == "plain answer"
    assert merge_reasoning("r", None) == "<think>\nr\n</think>\n\n"
    assert merge_reasoning("r", "<think>\nr\n</think>\n\nx") == "<think>\nr\n</think>\n\nx"
