"""Up-front checks of a model or tokenizer source, before any stage loads it or writes anything.

A local model folder must exist, hold ``config.json`` and a tokenizer (one of
:data:`TOKENIZER_FILES`): ``AutoTokenizer`` on a folder without one does not fail, it builds a
tokenizer with an empty vocabulary, and the stages then fail far away (sft blames the data file,
generate dies in the chat template, kd reports a size mismatch). A name that cannot be a hub id
(an absolute or ``./`` path, more than one ``/``) and is not on disk is a missing path, said as
such instead of a hub lookup error. Everything else is left to the hub loader.

Used by generate, eval (local backends), sft, kd and ``kd cache``; failures are
:class:`~pipeline.errors.UserError` (one line, exit 2), naming the folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.errors import UserError

__all__ = ["TOKENIZER_FILES", "ModelSourceError", "check_model_source", "check_student", "looks_like_hub_id"]

# Files from which transformers can build a tokenizer: fast (tokenizer.json), SentencePiece
# (tokenizer.model, spiece.model), byte-level BPE (vocab.json + merges.txt), WordPiece (vocab.txt),
# tiktoken (tokenizer.tiktoken).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt",
                   "tokenizer.tiktoken")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelSourceError(UserError):
    """A model or tokenizer folder is missing or incomplete."""


def looks_like_hub_id(name: str) -> bool:
    """``org/name`` or ``name`` (what the hub accepts); paths such as ``/x``, ``./x``, ``a/b/c`` are not."""
    return bool(_HUB_ID.match(name)) and ".." not in name


def check_model_source(source: str, what: str = "model", *, weights: bool = True, tokenizer: bool = True) -> None:
    """Raise :class:`ModelSourceError` when ``source`` is a local path that cannot serve as a model
    (``weights``: needs ``config.json``) with a tokenizer (``tokenizer``), or a path that is not there."""
    path = Path(source).expanduser()
    if not path.exists():
        if not looks_like_hub_id(source):
            raise ModelSourceError(f"{what} {source}: no such folder")
        return  # a hub name: the loader says if it is wrong
    if not path.is_dir():
        raise ModelSourceError(f"{what} {path}: not a folder (a model folder holds config.json, the weights and "
                               "the tokenizer files)")
    if weights and not (path / "config.json").is_file():
        raise ModelSourceError(f"{what} {path}: no config.json here, so this is not a model folder")
    if tokenizer and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelSourceError(f"{what} {path}: no tokenizer in this folder (none of {', '.join(TOKENIZER_FILES)}); "
                               "save it next to the weights (tokenizer.save_pretrained) or name a tokenizer folder")


def check_student(model: str, tokenizer: str | None = None) -> None:
    """The training stages' student: a model with a tokenizer, or a model plus a tokenizer folder."""
    check_model_source(model, "model", tokenizer=tokenizer is None)
    if tokenizer:
        check_model_source(tokenizer, "tokenizer", weights=False)
