"""openai backend: any OpenAI-compatible ``/chat/completions`` endpoint (vllm serve, SGLang, hosted APIs).

Rules:

* One request per sample (``n=1``, seed ``prompt seed + sample index``): usage then gives exact
  per-sample token counts, and hosted APIs that reject ``n > 1`` work too. At most
  ``concurrency`` requests are in flight (a thread pool over one pooled ``httpx.Client``).
* Retries: HTTP 429, any 5xx, timeouts and connection errors are retried up to ``max_retries``
  times with exponential backoff (``retry_backoff_s * 2**attempt``, full jitter, capped at 60 s;
  a ``Retry-After`` header is honoured). Other 4xx errors fail at once, with the server's message.
* The API key is read from the env var named by ``api_key_env`` and sent only as the
  ``Authorization`` header; it never appears in logs, errors, records or the saved config, even
  when a server echoes it back in an error body (every server text is redacted before use).
* A request that fails for good raises :class:`OpenAIError`, a ``UserError``: one line naming the
  URL (and, for 401/403, the env var the key came from), exit code 2.
* R1-style servers return the reasoning separately (``reasoning_content``, or ``reasoning`` in newer
  vLLM); it is merged back as ``<think>\\n{reasoning}\\n</think>\\n\\n{content}`` so the stored
  response has the same shape whatever the engine.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pipeline.chat import THINK_CLOSE, THINK_OPEN
from pipeline.errors import UserError
from pipeline.generate.backends.base import Completion, PromptInput, normalize_finish_reason

__all__ = ["OpenAIBackend", "OpenAIError", "merge_reasoning", "redact"]

log = logging.getLogger(__name__)
RETRY_STATUS = {408, 409, 429}
MAX_BACKOFF_S = 60.0


class OpenAIError(UserError):
    """A request failed for good (non-retryable status, or retries exhausted)."""


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` (the API key) replaced by ``***``."""
    return text.replace(secret, "***") if secret else text


def merge_reasoning(reasoning: str | None, content: str | None) -> str:
    """``<think>\\n{reasoning}\\n</think>\\n\\n{content}``; content alone when there is no reasoning field."""
    content = content or ""
    if reasoning is None or THINK_OPEN in content[:64]:
        return content
    return f"{THINK_OPEN}\n{reasoning.strip()}\n{THINK_CLOSE}\n\n{content.lstrip()}"


class OpenAIBackend:
    name = "openai"
    tokenizer = None  # the server renders the conversation

    def __init__(self, model: str, base_url: str, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 32,
                 max_retries: int = 8, retry_backoff_s: float = 1.0, timeout_s: float = 600.0, send_seed: bool = True,
                 prefill_think: bool = False, extra_body: dict | None = None):
        import httpx

        self.model = model
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.send_seed = send_seed
        self.prefill_think = prefill_think
        self.extra_body = dict(extra_body or {})
        key = os.environ.get(api_key_env)
        self._key, self._key_env = key or None, api_key_env
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._httpx = httpx
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout_s, connect=min(30.0, timeout_s)),
                                    limits=httpx.Limits(max_connections=concurrency,
                                                        max_keepalive_connections=concurrency))
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="openai")
        self.retries = 0  # total retried requests (for stats)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ one request
    def _body(self, prompt: PromptInput, sample_index: int, sampling: Any) -> dict[str, Any]:
        messages = list(prompt.messages)
        body: dict[str, Any] = {"model": self.model, "messages": messages, "n": 1,
                                "temperature": sampling.temperature, "top_p": sampling.top_p,
                                "max_tokens": sampling.max_tokens}
        if self.send_seed:
            body["seed"] = ((prompt.seed if prompt.seed is not None else sampling.seed) + sample_index) % (2 ** 31)
        if self.prefill_think and prompt.forced_prefix:
            body["messages"] = messages + [{"role": "assistant", "content": prompt.forced_prefix}]
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        body.update(self.extra_body)
        return body

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(MAX_BACKOFF_S, float(retry_after))
            except ValueError:
                pass
        return random.uniform(0, min(MAX_BACKOFF_S, self.retry_backoff_s * (2 ** attempt)))

    def _request(self, body: dict[str, Any]) -> dict[str, Any]:
        httpx = self._httpx
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                resp = self._client.post(self.url, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = redact(f"{type(exc).__name__}: {exc}", self._key)
            else:
                if resp.status_code == 200:
                    try:
                        return resp.json()
                    except ValueError:
                        raise OpenAIError(f"{self.url}: HTTP 200 but the body is not JSON: "
                                          f"{redact(resp.text, self._key)[:200]!r}") from None
                detail = redact(resp.text, self._key)[:300].replace("\n", " ")
                last = f"HTTP {resp.status_code}: {detail}"
                if resp.status_code in (401, 403):
                    key = f"the key in ${self._key_env}" if self._key else f"no key (${self._key_env} is not set)"
                    raise OpenAIError(f"{self.url}: {last} (sent {key})")
                if resp.status_code not in RETRY_STATUS and resp.status_code < 500:
                    raise OpenAIError(f"{self.url}: {last}")
                retry_after = resp.headers.get("retry-after")
            if attempt == self.max_retries:
                break
            with self._lock:
                self.retries += 1
            delay = self._backoff(attempt, retry_after)
            log.warning("request failed (%s); retry %d/%d in %.1fs", last, attempt + 1, self.max_retries, delay)
            time.sleep(delay)
        raise OpenAIError(f"{self.url}: giving up after {self.max_retries + 1} attempts; last error: {last}")

    def _sample(self, prompt: PromptInput, sample_index: int, sampling: Any) -> Completion:
        data = self._request(self._body(prompt, sample_index, sampling))
        try:
            choice = data["choices"][0]
            msg = choice.get("message") or {}
            reasoning = msg.get("reasoning_content")
            if reasoning is None:
                reasoning = msg.get("reasoning")
            text = merge_reasoning(reasoning, msg.get("content"))
            usage = data.get("usage") or {}
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise OpenAIError(f"{self.url}: unexpected response shape ({exc!r}): "
                              f"{redact(str(data), self._key)[:300]}") from None
        return Completion(text=text, prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0),
                          finish_reason=normalize_finish_reason(choice.get("finish_reason")))

    # ------------------------------------------------------------------ interface
    def submit(self, prompt: PromptInput, sample_index: int, sampling: Any) -> Future[Completion]:
        """One sample in the background, through the same pool, retries and key handling (the judge)."""
        return self._pool.submit(self._sample, prompt, sample_index, sampling)

    def generate(self, prompts: list[PromptInput], sampling: Any) -> list[list[Completion]]:
        futures = [[self.submit(p, k, sampling) for k in p.indices(sampling)] for p in prompts]
        try:
            return [[f.result() for f in row] for row in futures]
        except BaseException:
            for row in futures:
                for f in row:
                    f.cancel()
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()
