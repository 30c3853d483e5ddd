"""Publishing the corpus to the Hugging Face Hub: a check before any work, the push after it.

:func:`check_hub` runs first, before the mix reads a record: ``huggingface_hub`` importable, a
token (``hub.token_env`` or the saved login), the Hub reachable and the token valid (``whoami``).
Any failure is a one-line :class:`~pipeline.errors.UserError` naming the endpoint and the cause,
so an offline machine learns it cannot publish in a second, not after an hour of mixing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.mix.config import HubConfig

__all__ = ["check_hub", "push", "UPLOAD_PATTERNS"]

log = logging.getLogger(__name__)
UPLOAD_PATTERNS = ["README.md", "data/*.parquet", "jsonl/*.jsonl", "*.png", "mix_report.json", "mix_config.yaml",
                   "filter_configs/*.yaml"]


def _api(cfg: HubConfig) -> tuple[Any, str]:
    try:
        from huggingface_hub import HfApi, get_token
    except ImportError:
        raise UserError("hub.repo_id is set but huggingface_hub is not installed (pip install huggingface_hub)") from None
    token = os.environ.get(cfg.token_env) or get_token()
    if not token:
        raise UserError(f"hub.repo_id is set but no token: set {cfg.token_env} or run `huggingface-cli login`")
    return HfApi(token=token), token


def check_hub(cfg: HubConfig) -> str | None:
    """Fail now, with a clear message, when the push could not happen; returns the account name."""
    if not cfg.repo_id:
        return None
    api, _ = _api(cfg)
    try:
        who = api.whoami()
    except Exception as exc:  # offline mode, DNS, refused connection, 401: all mean "cannot publish"
        endpoint = api.endpoint
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"cannot publish to {cfg.repo_id}: the Hugging Face Hub at {endpoint} is unreachable or "
                        f"rejected the token ({type(exc).__name__}: {first}); nothing was mixed. Unset hub.repo_id "
                        "to mix without publishing") from None
    return str(who.get("name", "?"))


def push(cfg: HubConfig, folder: Path) -> str:
    """Create the dataset repo (if needed) and upload the card, shards and charts; returns its URL."""
    api, _ = _api(cfg)
    url = api.create_repo(cfg.repo_id, repo_type="dataset", private=cfg.private, exist_ok=True)
    api.upload_folder(repo_id=cfg.repo_id, folder_path=str(folder), repo_type="dataset",
                      allow_patterns=UPLOAD_PATTERNS, commit_message="distill mix: corpus and dataset card")
    log.info("mix: pushed %s to %s", folder, url)
    return str(url)
