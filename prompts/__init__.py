"""Prompt templates, one file per template: ``prompts/<name>.txt``.

Rules (see ``prompts/README.md``):

* A template holds the literal placeholder ``{problem}`` exactly once; it is replaced verbatim
  (no ``str.format``), so LaTeX braces such as ``\\boxed{}`` need no escaping.
* One trailing newline of the file is dropped (editors add one); everything else is kept.
* A template is named either by its bare name (``math`` -> ``prompts/math.txt``) or by a path to
  any text file (``my_templates/olympiad.txt``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PLACEHOLDER", "TEMPLATE_DIR", "TemplateError", "builtin_templates", "load_template", "apply_template"]

PLACEHOLDER = "{problem}"
TEMPLATE_DIR = Path(__file__).resolve().parent


class TemplateError(ValueError):
    """A template name that resolves to no file, or a file without exactly one ``{problem}``."""


def builtin_templates() -> list[str]:
    """Names of the templates shipped in ``prompts/``."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.txt"))


def _resolve(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix and p.is_file():
        return p
    builtin = TEMPLATE_DIR / f"{name_or_path}.txt"
    if "/" not in name_or_path and builtin.is_file():
        return builtin
    if p.is_file():
        return p
    raise TemplateError(f"template {name_or_path!r} not found: neither a file nor one of the built-in templates "
                        f"({', '.join(builtin_templates())})")


def load_template(name_or_path: str) -> str:
    """The template text, validated (exactly one ``{problem}``)."""
    path = _resolve(name_or_path)
    text = path.read_text(encoding="utf-8")
    if text.endswith("\n"):
        text = text[:-1]
    count = text.count(PLACEHOLDER)
    if count != 1:
        raise TemplateError(f"{path}: a template must contain {PLACEHOLDER} exactly once (found {count})")
    return text


def apply_template(template: str, problem: str) -> str:
    """The user turn: ``template`` with ``{problem}`` replaced by the problem text."""
    return template.replace(PLACEHOLDER, problem, 1)
