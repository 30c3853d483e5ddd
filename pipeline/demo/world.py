"""The demo world: column addition/subtraction word problems with exact answers, and the trace program.

Rules
-----
* A problem is ``a OP b`` with ``OP`` in ``+``/``-`` and operands of ``min_digits``..``max_digits``
  digits (``a >= b`` for subtraction, so answers are never negative). Its prompt is rendered with the
  DeepSeek-R1 math template (``"{problem}\\nPlease reason step by step, and put your final answer
  within \\boxed{}."``), exactly like a real math prompt.
* Train and test problems are drawn without replacement from one seeded stream: the test split is
  the first ``n_test`` draws, so the two never share an ``(a, op, b)`` triple nor a problem text
  (:func:`make_splits` asserts both).
* :func:`trace` is the program that writes the reference reasoning: one line per column, right to
  left, with the carry/borrow made explicit, then the digits read back left to right, then the
  final answer in ``\\boxed{}``.
* A controlled share of training traces is faulty (:data:`FAULTS`), so a teacher trained on them
  writes the defects the R1 filter rules exist to remove: a wrong column (wrong final answer), a
  repeated paragraph, a stray code block, an inserted Chinese sentence. Which traces are faulty is
  decided by the seed alone.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pipeline.records import write_text_atomic

__all__ = ["R1_MATH_TEMPLATE", "FAULTS", "Problem", "make_splits", "render_prompt", "trace", "faulty_trace",
           "write_prompts", "teacher_corpus", "tokenizer_texts"]

R1_MATH_TEMPLATE = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
FAULTS = ("wrong_answer", "repetition", "code_block", "mixed_language")
_PLACES = ("ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands")
# Question wordings per operation ({a}, {b} the operands). Few and regular, so a tiny model learns
# to pull the operands out of the text in its first reasoning line.
_WORDINGS = {
    "+": ("What is {a} + {b}?",
          "A farm has {a} sheep and buys {b} more. How many sheep does it have now?"),
    "-": ("What is {a} - {b}?",
          "A shop had {a} pens and sold {b}. How many pens are left?"),
}
# Inserted by the "mixed_language" fault: whole Chinese sentences (the R1 paper's language-mixing case).
# Written three times by the "repetition" fault: >= 40 characters (the redundancy rule's line floor) in
# words the demo tokenizer already knows, so the fault costs few tokens (a faulty trace longer than the
# training max_seq_len would be dropped, and the teacher would never learn the fault).
_REPEATED = "Reading the digits from left to right gives the answer to the problem."
_CHINESE = ("我们从个位开始逐位计算。", "这一步要注意进位和借位。", "让我再检查一下计算结果。")


@dataclass(frozen=True)
class Problem:
    id: str
    a: int
    op: str
    b: int
    wording: int

    @property
    def problem(self) -> str:
        return _WORDINGS[self.op][self.wording].format(a=self.a, b=self.b)

    @property
    def answer(self) -> str:
        return str(self.a + self.b if self.op == "+" else self.a - self.b)

    @property
    def key(self) -> tuple[int, str, int]:
        return (self.a, self.op, self.b)


def render_prompt(problem: str) -> str:
    """The user turn, in the R1 math template."""
    return R1_MATH_TEMPLATE.format(problem=problem)


def _draw(rng: random.Random, min_digits: int, max_digits: int, ops: tuple[str, ...]) -> tuple[int, str, int]:
    op = rng.choice(ops)
    da, db = rng.randint(min_digits, max_digits), rng.randint(min_digits, max_digits)
    a = rng.randint(10 ** (da - 1) if da > 1 else 0, 10 ** da - 1)
    b = rng.randint(10 ** (db - 1) if db > 1 else 0, 10 ** db - 1)
    if op == "-" and b > a:
        a, b = b, a
    return a, op, b


def make_splits(n_train: int, n_test: int, seed: int = 0, min_digits: int = 3, max_digits: int = 3,
                ops: Iterable[str] = ("+", "-")) -> tuple[list[Problem], list[Problem]]:
    """``(train, test)`` problems, disjoint by operands and by text (asserted)."""
    ops = tuple(ops)
    if not ops or any(op not in _WORDINGS for op in ops):
        raise ValueError(f"ops must be a non-empty subset of {sorted(_WORDINGS)}, got {ops!r}")
    if not 1 <= min_digits <= max_digits <= len(_PLACES) - 1:
        raise ValueError(f"need 1 <= min_digits <= max_digits <= {len(_PLACES) - 1}")
    space = len(ops) * sum(9 * 10 ** (d - 1) for d in range(min_digits, max_digits + 1)) ** 2 // 2
    if n_train + n_test > space // 4:
        raise ValueError(f"{n_train + n_test} problems asked from a space of about {space}: widen the digits")
    rng = random.Random(seed)
    seen: set[tuple[int, str, int]] = set()
    problems: list[Problem] = []
    while len(problems) < n_train + n_test:
        key = _draw(rng, min_digits, max_digits, ops)
        if key in seen:
            continue
        seen.add(key)
        split = "test" if len(problems) < n_test else "train"
        idx = len(problems) if split == "test" else len(problems) - n_test
        wording = rng.randrange(len(_WORDINGS[key[1]]))
        problems.append(Problem(f"demo-{split}-{idx:05d}", key[0], key[1], key[2], wording))
    test, train = problems[:n_test], problems[n_test:]
    assert not {p.key for p in train} & {p.key for p in test}, "demo train/test share operands"
    assert not {p.problem for p in train} & {p.problem for p in test}, "demo train/test share a problem text"
    return train, test


def _columns(p: Problem, wrong_column: int | None = None) -> tuple[list[str], str]:
    """The per-column lines and the digit string read back (``wrong_column`` miscomputes one column).

    Every column line has the same shape, ``"<place>: xOPy=f, fOPc=s[, s+10=t], write d, carry|borrow c'."``:
    one two-operand fact, then the carry/borrow applied on its own, so each token a model predicts
    needs one small table lookup or a copy, and the step is the same in every column.
    """
    width = max(len(str(p.a)), len(str(p.b)))
    da, db = str(p.a).zfill(width)[::-1], str(p.b).zfill(width)[::-1]
    word = "carry" if p.op == "+" else "borrow"
    lines, digits, carry = [], [], 0
    for i in range(width):
        x, y = int(da[i]), int(db[i])
        first = x + y if p.op == "+" else x - y
        s = first + carry if p.op == "+" else first - carry
        digit, new = s % 10, (s // 10 if p.op == "+" else int(s < 0))
        if i == wrong_column:
            digit = (digit + 1) % 10
        steps = f"{x}{p.op}{y}={first}, {first}{p.op}{carry}={s}"
        if p.op == "-" and s < 0:
            steps += f", {s}+10={s + 10}"
        lines.append(f"{_PLACES[i]}: {steps}, write {digit}, {word} {new}.")
        digits.append(str(digit))
        carry = new
    if p.op == "+" and carry:
        lines.append(f"{_PLACES[width]}: the last carry 1 is written in front.")
        digits.append("1")
    return lines, "".join(reversed(digits))


def _assemble(p: Problem, lines: list[str], digits: str, extra_think: str = "", extra_line: str = "") -> str:
    value = str(int(digits))
    read = f"Reading the digits from left to right gives {digits}"
    read += "." if value == digits else f", which is {value}."
    body = [f"We need {p.a} {p.op} {p.b}.", *lines]
    if extra_line:
        body.insert(1, extra_line)
    think = "\n".join(body) + "\n" + read
    if extra_think:
        think += "\n\n" + extra_think
    return f"<think>\n{think}\n</think>\n\nThe answer is \\boxed{{{value}}}."


def trace(p: Problem) -> str:
    """The correct step-by-step response (``<think>`` block + boxed answer)."""
    lines, digits = _columns(p)
    return _assemble(p, lines, digits)


def faulty_trace(p: Problem, fault: str, rng: random.Random) -> str:
    """A response with one defect of kind ``fault`` (one of :data:`FAULTS`)."""
    lines, digits = _columns(p)
    if fault == "wrong_answer":
        lines, digits = _columns(p, wrong_column=rng.randrange(len(lines) - (1 if "last carry" in lines[-1] else 0)))
        return _assemble(p, lines, digits)
    if fault == "repetition":
        # one paragraph (>= 40 characters, no digits) written three times: what the redundancy rule's line
        # test targets. Without digits a tiny teacher reproduces the copies exactly; a paragraph quoting a
        # column came out with different digits in each copy (sampling), which is no repetition at all.
        return _assemble(p, lines, digits, extra_think="\n\n".join([_REPEATED] * 3))
    if fault == "code_block":
        code = f"```python\nprint({p.a} {p.op} {p.b})\n```"
        return _assemble(p, lines, digits, extra_think=f"I can also check it with code:\n{code}")
    if fault == "mixed_language":
        return _assemble(p, lines, digits, extra_line=rng.choice(_CHINESE))
    raise ValueError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")


def _prompt_row(p: Problem) -> dict:
    return {"id": p.id, "problem": p.problem, "prompt": render_prompt(p.problem), "answer": p.answer}


def write_prompts(problems: list[Problem], path: str | Path) -> Path:
    """Prompt file: one ``{id, problem, prompt, answer}`` row per problem (``problem`` is the bare question)."""
    path = Path(path)
    write_text_atomic(path, "".join(json.dumps(_prompt_row(p), ensure_ascii=False) + "\n" for p in problems))
    return path


def teacher_corpus(train: list[Problem], fault_rate: float, seed: int = 0) -> list[dict]:
    """Chat-format records the teacher is trained on; ``fault_rate`` of them carry one fault each.

    Faults cycle through :data:`FAULTS` so each kind gets an equal share; ``meta.fault`` names it.
    """
    if not 0.0 <= fault_rate < 1.0:
        raise ValueError(f"fault_rate must be in [0, 1), got {fault_rate}")
    rng = random.Random(seed + 7919)
    n_faulty = round(fault_rate * len(train))
    faulty = set(rng.sample(range(len(train)), n_faulty))
    out, k = [], 0
    for i, p in enumerate(train):
        if i in faulty:
            fault = FAULTS[k % len(FAULTS)]
            k += 1
            response = faulty_trace(p, fault, rng)
        else:
            fault, response = None, trace(p)
        out.append({"id": p.id, "prompt_id": p.id, "answer": p.answer, "domain": "math",
                    "messages": [{"role": "user", "content": render_prompt(p.problem)},
                                 {"role": "assistant", "content": response}],
                    "meta": {"fault": fault}})
    return out


def tokenizer_texts(problems: list[Problem]) -> list[str]:
    """Text to train the demo tokenizer on: prompts, clean traces and every fault's wording."""
    rng = random.Random(0)
    texts = []
    for i, p in enumerate(problems):
        texts.append(render_prompt(p.problem))
        texts.append(trace(p) if i % 5 else faulty_trace(p, FAULTS[(i // 5) % len(FAULTS)], rng))
    texts.extend(_CHINESE * 20)
    return texts
