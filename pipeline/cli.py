"""``distill``: one thin subcommand per stage.

Each stage module exposes ``register(subparsers)``; stage modules import heavy libraries (torch,
transformers, vllm) inside their run functions so ``distill --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from pipeline.config import ConfigError
from pipeline.errors import UserError
from pipeline.records import RecordError

# subcommand -> module exposing register(subparsers). A module that fails to import is a broken
# install: the CLI stops with an error naming it, never a silently missing subcommand.
STAGES: dict[str, str] = {
    "generate": "pipeline.generate.stage",
    "merge": "pipeline.generate.merge",
    "filter": "filters.stage",
    "sft": "pipeline.train.sft",
    "kd": "pipeline.train.kd",
    "eval": "pipeline.evaluate.stage",
    "demo": "pipeline.demo.stage",
    "mix": "pipeline.mix.stage",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill",
        description="Distil reasoning LLMs: generate teacher traces, filter them, train a student, evaluate Pass@1.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in STAGES.items():
        try:
            mod = importlib.import_module(module)
        except Exception as exc:
            raise StageImportError(f"distill {name}: stage module {module} failed to import: "
                                   f"{type(exc).__name__}: {exc}") from exc
        mod.register(sub)
    return parser


class StageImportError(ImportError):
    """A stage module of the CLI cannot be imported (a broken install or a syntax error)."""


def os_error_line(exc: OSError) -> str:
    """One line naming the path(s) and the system's reason: ``runs/x: Read-only file system``."""
    reason = exc.strerror or str(exc)
    if exc.filename is not None and exc.filename2 is not None:
        return f"{exc.filename} -> {exc.filename2}: {reason}"
    if exc.filename is not None:
        return f"{exc.filename}: {reason}"
    return f"{type(exc).__name__}: {reason}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.verbose:  # httpx logs every request at INFO: one line per sample/verdict floods a run
        logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        result = args.func(args)
    except (ConfigError, RecordError, UserError) as exc:
        print(f"distill {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # read-only folder, no such file, a folder where a file belongs, disk full ...
        if args.verbose:
            raise
        print(f"distill {args.command}: error: {os_error_line(exc)} (run with -v for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"distill {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return int(result or 0) if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
