"""Typed stage configs: YAML load, ``--set key=value`` overrides, errors that name file and key.

Every stage declares a pydantic model deriving from :class:`StageConfig`. Unknown keys are
errors (``extra="forbid"``), values are validated at load, and a failure raises
:class:`ConfigError` whose message names the file and the dotted key, e.g.::

    configs/generate/r1.yaml: sampling.nn: unknown key (known: n, temperature, top_p, ...)

Inner code receives the typed object, never the raw dict.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError

__all__ = ["ConfigError", "StageConfig", "Section", "load_config", "parse_override", "describe_fields",
           "Fraction", "NonNegativeInt", "PositiveInt", "PositiveFloat"]

# Bounded field types for thresholds: a value outside the range is a config error naming the key.
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]  # a share or ratio in [0, 1]

C = TypeVar("C", bound="StageConfig")


class ConfigError(ValueError):
    """A config file or override is wrong; the message names the file and the key."""


class Section(BaseModel):
    """A nested config block (``sampling:``, ``lora:``...). Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class StageConfig(Section):
    """Base of every stage config."""


def _yaml_value(text: str) -> Any:
    """Parse an override value the way YAML would (``4`` -> int, ``true`` -> bool, ``[a,b]`` -> list)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"sampling.n=4"`` -> (["sampling", "n"], 4)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set sampling.n=4")
    key, value = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: empty key")
    return key.split("."), _yaml_value(value)


def _set_path(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {part!r} is not a section")
        node = child
    node[path[-1]] = value


def _format_error(source: str, exc: ValidationError, cls: type[BaseModel]) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            known = _known_keys(cls, [str(p) for p in err["loc"][:-1]])
            hint = f" (known keys here: {', '.join(known)})" if known else ""
            lines.append(f"{source}: {key}: unknown key{hint}")
        else:
            got = err.get("input")
            got_txt = f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
            lines.append(f"{source}: {key}: {err['msg']}{got_txt}")
    return "\n".join(lines)


def _known_keys(cls: type[BaseModel], loc: list[str]) -> list[str]:
    model: Any = cls
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _model_of(field.annotation)
        if model is None:
            return []
    return sorted(getattr(model, "model_fields", {}).keys())


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None,
                values: dict[str, Any] | None = None) -> C:
    """Build ``cls`` from a YAML file, then dotted ``--set`` overrides, then explicit ``values``.

    ``values`` maps dotted keys to already-typed values (from explicit CLI flags); ``None``
    values are skipped so unset flags do not override the file.
    """
    data: dict[str, Any] = {}
    source = str(path) if path else "<flags>"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping of keys, got {type(loaded).__name__}")
        data = loaded
    for item in overrides or []:
        key_path, value = parse_override(item)
        _set_path(data, key_path, value)
        source = f"{path} (with --set)" if path else "--set"
    for key, value in (values or {}).items():
        if value is not None:
            _set_path(data, key.split("."), value)
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(source, exc, cls)) from None


def describe_fields(cls: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per (nested) field: ``key (type, default): description`` for ``--help``."""
    out = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        sub = _model_of(field.annotation)
        if sub is not None and sub is not cls:
            out.append(f"{key}: {field.description or ''}".rstrip(": "))
            out.extend(describe_fields(sub, prefix=key + "."))
            continue
        if typing.get_origin(field.annotation) is typing.Literal:
            ann = "|".join(str(a) for a in typing.get_args(field.annotation))
        else:
            ann = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
        default = "required" if field.is_required() else f"default {field.get_default(call_default_factory=True)!r}"
        desc = f": {field.description}" if field.description else ""
        out.append(f"{key} ({ann}, {default}){desc}")
    return out
