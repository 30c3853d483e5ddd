"""Shared CLI plumbing: ``--config``, ``--set``, explicit flags mapped to config keys, field help.

A stage registers itself with::

    FLAGS = {"--output": ("output_dir", str, "output folder"), "--n": ("sampling.n", int, "samples per prompt")}

    def register(sub):
        p = add_stage_parser(sub, "generate", GenerateConfig, "Teacher traces ...", FLAGS)
        p.set_defaults(func=lambda args: run(config_from_args(GenerateConfig, args, FLAGS)))

A stage's sub-actions (``distill eval score``, ``distill kd cache``, ``distill sft check``) are
argparse sub-subcommands made by :func:`add_stage_action`, the one idiom for them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pipeline.config import StageConfig, describe_fields, load_config

__all__ = ["Flag", "add_stage_parser", "add_stage_action", "add_config_arguments", "config_from_args", "help_text"]

Flag = tuple[str, Any, str]  # (dotted config key, type or "store_true", help)


def help_text(text: str) -> str:
    """``text`` safe for an argparse ``help=``: argparse %-formats help strings, so a literal ``%``
    (``95% CI``) must be doubled or ``--help`` crashes."""
    return text.replace("%", "%%")


def add_config_arguments(parser: argparse.ArgumentParser, flags: dict[str, Flag] | None = None,
                         inherited: bool = False) -> None:
    """``--config``, ``--set`` and the stage's explicit flags. ``inherited``: the parser is a sub-action
    whose parent stage has the same arguments, so an unset one must not hide the parent's value
    (``distill kd --config X cache`` and ``distill kd cache --config X`` mean the same)."""
    unset = argparse.SUPPRESS if inherited else None
    parser.add_argument("--config", "-c", metavar="FILE.yaml", default=unset, help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=argparse.SUPPRESS if inherited else [],
                        metavar="KEY=VALUE",
                        help="override a config key (dotted, YAML value), e.g. --set sampling.n=4; repeatable")
    for flag, (key, typ, help_) in (flags or {}).items():
        dest = "flag_" + key.replace(".", "__")
        metavar = key.rsplit(".", 1)[-1].upper()
        text = f"{help_text(help_)} (config key: {key})"
        if typ == "store_true":
            parser.add_argument(flag, dest=dest, action="store_const", const=True, default=unset, help=text)
        elif typ == "list":
            parser.add_argument(flag, dest=dest, nargs="+", default=unset, metavar=metavar, help=text)
        else:
            parser.add_argument(flag, dest=dest, type=typ, default=unset, metavar=metavar, help=text)


def _fields_epilog(config_cls: type[StageConfig]) -> str:
    return "config fields (YAML keys, or --set KEY=VALUE):\n  " + "\n  ".join(describe_fields(config_cls))


def add_stage_parser(sub: argparse._SubParsersAction, name: str, config_cls: type[StageConfig], help_: str,
                     flags: dict[str, Flag] | None = None) -> argparse.ArgumentParser:
    """A subcommand parser whose ``--help`` lists every config field with type, default and meaning."""
    parser = sub.add_parser(name, help=help_text(help_), description=help_, epilog=_fields_epilog(config_cls),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, flags)
    return parser


def add_stage_action(parser: argparse.ArgumentParser, name: str, help_: str, func: Callable[[argparse.Namespace], Any],
                     config_cls: type[StageConfig] | None = None,
                     flags: dict[str, Flag] | None = None) -> argparse.ArgumentParser:
    """A sub-action of a stage: ``distill eval score``, ``distill kd cache``, ``distill sft check``.

    The one idiom for sub-actions: an argparse sub-subcommand after the stage name. Without
    ``config_cls`` the action takes the stage's config and flags (inherited: they may be given
    before or after the action name); with one it has its own config fields.
    """
    actions = getattr(parser, "_stage_actions", None)
    if actions is None:
        actions = parser.add_subparsers(dest="action", metavar="ACTION", title="actions (optional)")
        actions.required = False
        parser.set_defaults(action=None)
        parser._stage_actions = actions  # type: ignore[attr-defined]
    own = config_cls is not None
    p = actions.add_parser(name, help=help_text(help_), description=help_,
                           epilog=_fields_epilog(config_cls) if own else None,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    if own:
        add_config_arguments(p, flags)
    elif flags is not None:
        add_config_arguments(p, flags, inherited=True)
    p.set_defaults(func=func)
    return p


def config_from_args(config_cls: type[StageConfig], args: argparse.Namespace,
                     flags: dict[str, Flag] | None = None) -> Any:
    values = {key: getattr(args, "flag_" + key.replace(".", "__"), None) for key, _, _ in (flags or {}).values()}
    return load_config(config_cls, getattr(args, "config", None), getattr(args, "overrides", None) or [], values)
