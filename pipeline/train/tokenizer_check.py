"""Teacher and student must share one vocabulary for logit distillation; say exactly what differs.

Rule: the two tokenizers must map the same strings to the same ids (``get_vocab()``, added and
special tokens included) and have the same length ``V``. The models' embedding matrices may be
padded to different row counts (Qwen2.5: 151,936 rows for 1.5B/7B, 152,064 for 32B/72B, with
``V = 151,665`` real tokens): the KD loss cuts both sides' logits to the first ``V`` columns, so
padded rows (which no text ever produces) are ignored. Fewer rows than ``V`` is an error.

A true mismatch raises :class:`TokenizerMismatch` naming the sizes, the first differing ids with
their tokens on each side, and a few tokens present on one side only. Different merge rules with
the same vocabulary are allowed (ids keep their meaning) but reported as a warning when a probe
text tokenizes differently, because the teacher then scores tokenizations it never produces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import UserError

__all__ = ["TokenizerMismatch", "VocabCheck", "check_vocab", "PROBE_TEXT"]

PROBE_TEXT = ("<think>\nLet x = 12. Then 2x + 3 = 27, so the answer is \\boxed{27}.\n</think>\n"
              "The answer is \\boxed{27}. 我们来一步一步地思考。")


class TokenizerMismatch(UserError, ValueError):
    """Teacher and student vocabularies differ (the message says where, in one line)."""


@dataclass
class VocabCheck:
    """``vocab_size``: real vocabulary both sides share; logits are cut to it."""

    vocab_size: int
    student_rows: int | None
    teacher_rows: int | None
    warnings: list[str] = field(default_factory=list)


def _show(token: str | None) -> str:
    return "<none>" if token is None else repr(token)


def _diff_message(t_vocab: dict[str, int], s_vocab: dict[str, int], t_len: int, s_len: int, limit: int = 5,
                  names: tuple[str, str] = ("", "")) -> str:
    t_by_id = {i: s for s, i in t_vocab.items()}
    s_by_id = {i: s for s, i in s_vocab.items()}
    diffs = []
    for i in range(max(t_len, s_len, max(t_by_id, default=-1) + 1, max(s_by_id, default=-1) + 1)):
        if t_by_id.get(i) != s_by_id.get(i):
            diffs.append(f"id {i}: teacher {_show(t_by_id.get(i))} vs student {_show(s_by_id.get(i))}")
            if len(diffs) >= limit:
                break
    only_t = sorted(set(t_vocab) - set(s_vocab), key=t_vocab.get)
    only_s = sorted(set(s_vocab) - set(t_vocab), key=s_vocab.get)
    n_diff = sum(1 for s, i in t_vocab.items() if s_vocab.get(s) != i)
    where = f" (teacher {names[0]}, student {names[1]})" if all(names) else ""
    parts = [f"teacher and student tokenizers differ{where}: sizes {t_len} (teacher) vs {s_len} (student); "
             f"{n_diff} teacher tokens have another id (or none) in the student"]
    if diffs:
        parts.append("first differing ids: " + "; ".join(diffs))
    if only_t:
        parts.append(f"only in teacher ({len(only_t)}): " + ", ".join(repr(x) for x in only_t[:limit]))
    if only_s:
        parts.append(f"only in student ({len(only_s)}): " + ", ".join(repr(x) for x in only_s[:limit]))
    parts.append("logit distillation needs one vocabulary; use a teacher from the student's family, or "
                 "distill from its generated text with `distill sft` instead")
    return "; ".join(parts)


def check_vocab(teacher_tok: Any, student_tok: Any, teacher_rows: int | None = None,
                student_rows: int | None = None) -> VocabCheck:
    """Raise :class:`TokenizerMismatch` unless the vocabularies are identical; return the shared size.

    ``*_rows``: the models' output-embedding row counts (``lm_head.weight.shape[0]``), when known.
    """
    t_vocab, s_vocab = teacher_tok.get_vocab(), student_tok.get_vocab()
    t_len, s_len = len(teacher_tok), len(student_tok)
    if t_vocab != s_vocab or t_len != s_len:
        names = (str(getattr(teacher_tok, "name_or_path", "") or ""), str(getattr(student_tok, "name_or_path", "") or ""))
        raise TokenizerMismatch(_diff_message(t_vocab, s_vocab, t_len, s_len, names=names))
    vocab = s_len
    for who, rows in (("student", student_rows), ("teacher", teacher_rows)):
        if rows is not None and rows < vocab:
            raise TokenizerMismatch(f"{who} output embedding has {rows} rows but the tokenizer has {vocab} tokens: "
                                    "the model cannot score every token id")
    warnings = []
    if teacher_tok(PROBE_TEXT)["input_ids"] != student_tok(PROBE_TEXT)["input_ids"]:
        warnings.append("teacher and student share a vocabulary but tokenize a probe text differently "
                        "(different merges or pre-tokenizer); the teacher scores the student's tokenization")
    if teacher_tok.eos_token != student_tok.eos_token:
        warnings.append(f"eos tokens differ: teacher {teacher_tok.eos_token!r}, student {student_tok.eos_token!r}")
    return VocabCheck(vocab, student_rows, teacher_rows, warnings)
