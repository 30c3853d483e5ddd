"""A minimal OpenAI-compatible chat-completions server for the judge tests (real HTTP on 127.0.0.1).

It plays a judge: the verdict is CORRECT when the text under ``[Response]`` contains the text under
``[Reference answer]`` (case-insensitive). Markers in the response script misbehaviour:
``FAIL500x<n>`` answers HTTP 500 to the first ``n`` requests for that prompt; ``MALFORMED`` always
answers prose without a verdict line; ``MALFORMED_ONCE`` does so on the first request only;
``SLOW`` waits ``slow_s`` seconds. Every request is logged (prompt hash, Authorization header).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class JudgeServer:
    def __init__(self, slow_s: float = 0.0, log_path: str | None = None):
        self.requests: list[dict[str, Any]] = []
        self.per_prompt: dict[str, int] = {}
        self.lock = threading.Lock()
        self.slow_s = slow_s
        self.log_path = log_path
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, payload = server.answer(self.path, body, self.headers.get("Authorization"))
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "JudgeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, path: str, body: dict[str, Any], auth: str | None) -> tuple[int, dict[str, Any]]:
        prompt = body["messages"][-1]["content"]
        h = hashlib.sha256(prompt.encode()).hexdigest()[:12]
        with self.lock:
            n = self.per_prompt.get(h, 0)
            self.per_prompt[h] = n + 1
            entry = {"prompt": h, "auth": auth, "path": path, "seed": body.get("seed"), "t": time.time()}
            self.requests.append(entry)
            if self.log_path:
                with open(self.log_path, "a") as fh:
                    fh.write(json.dumps(entry) + "\n")
        response = prompt.split("[Response]\n", 1)[1].rsplit("\n\nReply with", 1)[0]
        reference = prompt.split("[Reference answer]\n", 1)[1].split("\n\n[Response]", 1)[0]
        if "SLOW" in response:
            time.sleep(self.slow_s)
        m = re.search(r"FAIL500x(\d+)", response)
        if m and n < int(m.group(1)):
            return 500, {"error": {"message": "overloaded"}}
        if "MALFORMED" in response and ("MALFORMED_ONCE" not in response or n == 0):
            text = "Well, it looks right to me overall."
        else:
            ok = reference.strip().lower() in response.lower()
            text = (f"<think>\nCompare the two.\n</think>\nRATIONALE: the final answer "
                    f"{'matches' if ok else 'differs from'} the reference.\nVERDICT: {'CORRECT' if ok else 'INCORRECT'}")
        return 200, {"id": "x", "object": "chat.completion", "model": body.get("model"),
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 10, "completion_tokens": 10}}

