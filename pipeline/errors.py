"""Errors a user can act on: the CLI prints them as one line and exits 2 (no traceback).

:class:`UserError` is the base of every error whose message is complete on its own (it names the
file, line, field, model, URL or key at fault). :class:`~pipeline.config.ConfigError` and
:class:`~pipeline.records.RecordError` are user errors too; the CLI catches all three.
"""

from __future__ import annotations

__all__ = ["UserError", "OutputBusy"]


class UserError(RuntimeError):
    """A failure caused by input, environment or configuration; the message says what and where."""


class OutputBusy(UserError):
    """Another run holds the lock of this output folder or file."""
