"""Shared CLI plumbing: ``--config``, ``--set``, explicit flags mapped to config keys, field help.

A stage registers itself with::

    FLAGS = {"--output": ("output_dir", str, "output folder"), "--n": ("sampling.n", int, "samples per prompt")}

    def register(sub):
        p = add_stage_parser(sub, "generate", GenerateConfig, "Teacher traces ...", FLAGS)
        p.set_defaults(func=lambda args: run(config_from_args(GenerateConfig, args, FLAGS)))
"""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.config import StageConfig, describe_fields, load_config

__all__ = ["Flag", "add_stage_parser", "add_config_arguments", "config_from_args"]

Flag = tuple[str, Any, str]  # (dotted config key, type or "store_true", help)


def add_config_arguments(parser: argparse.ArgumentParser, flags: dict[str, Flag] | None = None) -> None:
    parser.add_argument("--config", "-c", metavar="FILE.yaml", help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted, YAML value), e.g. --set sampling.n=4; repeatable")
    for flag, (key, typ, help_) in (flags or {}).items():
        dest = "flag_" + key.replace(".", "__")
        metavar = key.rsplit(".", 1)[-1].upper()
        if typ == "store_true":
            parser.add_argument(flag, dest=dest, action="store_const", const=True, default=None,
                                help=f"{help_} (config key: {key})")
        elif typ == "list":
            parser.add_argument(flag, dest=dest, nargs="+", default=None, metavar=metavar, help=f"{help_} (config key: {key})")
        else:
            parser.add_argument(flag, dest=dest, type=typ, default=None, metavar=metavar, help=f"{help_} (config key: {key})")


def add_stage_parser(sub: argparse._SubParsersAction, name: str, config_cls: type[StageConfig], help_: str,
                     flags: dict[str, Flag] | None = None) -> argparse.ArgumentParser:
    """A subcommand parser whose ``--help`` lists every config field with type, default and meaning."""
    epilog = "config fields (YAML keys, or --set KEY=VALUE):\n  " + "\n  ".join(describe_fields(config_cls))
    parser = sub.add_parser(name, help=help_, description=help_, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, flags)
    return parser


def config_from_args(config_cls: type[StageConfig], args: argparse.Namespace,
                     flags: dict[str, Flag] | None = None) -> Any:
    values = {key: getattr(args, "flag_" + key.replace(".", "__"), None) for key, _, _ in (flags or {}).values()}
    return load_config(config_cls, args.config, args.overrides, values)
