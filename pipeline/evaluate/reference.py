"""Published numbers to print beside ours: the DeepSeek-R1 paper's distilled models (and R1 itself).

Source: DeepSeek-AI, "DeepSeek-R1: Incentivizing Reasoning Capability in LLMs via Reinforcement
Learning" (arXiv:2501.12948), Table 5 (distilled models; pass@1 with k samples at temperature 0.6,
top-p 0.95, 32,768 tokens; AIME cons@64) and Table 4 (DeepSeek-R1). Percentages.
GPQA Diamond pass@1 is kept under ``gpqa`` (the ``gpqa`` benchmark is the Diamond set by default);
LiveCodeBench and Codeforces columns are left out.
"""

from __future__ import annotations

import re

__all__ = ["PAPER", "PAPER_SOURCE", "match_reference"]

PAPER_SOURCE = "DeepSeek-R1 paper (arXiv:2501.12948), Tables 4-5"

# model -> benchmark key -> metric -> value (percent)
PAPER: dict[str, dict[str, dict[str, float]]] = {
    "DeepSeek-R1-Distill-Qwen-1.5B": {"aime24": {"pass@1": 28.9, "cons@64": 52.7}, "math500": {"pass@1": 83.9}, "gpqa": {"pass@1": 33.8}},
    "DeepSeek-R1-Distill-Qwen-7B": {"aime24": {"pass@1": 55.5, "cons@64": 83.3}, "math500": {"pass@1": 92.8}, "gpqa": {"pass@1": 49.1}},
    "DeepSeek-R1-Distill-Qwen-14B": {"aime24": {"pass@1": 69.7, "cons@64": 80.0}, "math500": {"pass@1": 93.9}, "gpqa": {"pass@1": 59.1}},
    "DeepSeek-R1-Distill-Qwen-32B": {"aime24": {"pass@1": 72.6, "cons@64": 83.3}, "math500": {"pass@1": 94.3}, "gpqa": {"pass@1": 62.1}},
    "DeepSeek-R1-Distill-Llama-8B": {"aime24": {"pass@1": 50.4, "cons@64": 80.0}, "math500": {"pass@1": 89.1}, "gpqa": {"pass@1": 49.0}},
    "DeepSeek-R1-Distill-Llama-70B": {"aime24": {"pass@1": 70.0, "cons@64": 86.7}, "math500": {"pass@1": 94.5}, "gpqa": {"pass@1": 65.2}},
    "DeepSeek-R1": {"aime24": {"pass@1": 79.8}, "math500": {"pass@1": 97.3}, "gpqa": {"pass@1": 71.5}},
}

# Most specific patterns first: "R1" alone must not catch the distilled models.
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"r1[-_ ]?distill[-_ ]?qwen[-_ ]?1\.5b", re.I), "DeepSeek-R1-Distill-Qwen-1.5B"),
    (re.compile(r"r1[-_ ]?distill[-_ ]?qwen[-_ ]?7b", re.I), "DeepSeek-R1-Distill-Qwen-7B"),
    (re.compile(r"r1[-_ ]?distill[-_ ]?qwen[-_ ]?14b", re.I), "DeepSeek-R1-Distill-Qwen-14B"),
    (re.compile(r"r1[-_ ]?distill[-_ ]?qwen[-_ ]?32b", re.I), "DeepSeek-R1-Distill-Qwen-32B"),
    (re.compile(r"r1[-_ ]?distill[-_ ]?llama[-_ ]?8b", re.I), "DeepSeek-R1-Distill-Llama-8B"),
    (re.compile(r"r1[-_ ]?distill[-_ ]?llama[-_ ]?70b", re.I), "DeepSeek-R1-Distill-Llama-70B"),
    (re.compile(r"(?:^|/)deepseek[-_]r1$", re.I), "DeepSeek-R1"),
]


def match_reference(*names: str | None) -> str | None:
    """The paper model a model path/name/label refers to, or None (first name that matches wins)."""
    for name in names:
        if not name:
            continue
        text = str(name).rstrip("/")
        for pattern, key in _PATTERNS:
            if pattern.search(text):
                return key
    return None
