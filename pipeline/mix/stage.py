"""``distill mix``: filtered outputs -> one deduplicated, stratified, shuffled, split corpus.

    distill mix --config configs/mix/r1_800k.yaml [--push-to-hub user/name]

Output folder (a Hugging Face dataset repo as is)::

    data/train-00000-of-0000N.parquet, data/validation-00000-of-00001.parquet
    jsonl/<same names>.jsonl          (with jsonl: true)
    README.md                         dataset card (YAML header: configs, features, sizes)
    lengths_<kind>.png                completion-length histograms
    mix_config.yaml                   the resolved config (`distill mix --config` it to rebuild)
    filter_configs/<source>.yaml      each source's filter config, from its report.json
    mix_report.json                   counts, dedup, quotas; written last: marks a finished mix

The work happens in ``<output>/.partial/``: pass 1 per source (:mod:`pipeline.mix.scan`, which also
spills the raw records by shuffle key), the plan (:mod:`pipeline.mix.plan`), the shards
(:mod:`pipeline.mix.write`). The sources are read once. Each step's result
is renamed into place when complete, so a killed mix, run again, resumes at the step it was in and
writes the same bytes as an uninterrupted one. One mix per output folder at a time (a lock).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.cliutil import add_stage_parser, config_from_args
from pipeline.config import ConfigError
from pipeline.locking import output_lock
from pipeline.mix.config import MixConfig
from pipeline.records import write_json_atomic, write_text_atomic

__all__ = ["run", "register", "FLAGS"]

log = logging.getLogger(__name__)
PARTIAL = ".partial"
REPORT = "mix_report.json"
_NOT_PINNED = {"workers", "overwrite", "hub", "chunk_mb"}


def _fingerprint(cfg: MixConfig, files: list[list[Path]]) -> str:
    h = hashlib.sha256(json.dumps(cfg.model_dump(mode="json", exclude=_NOT_PINNED), sort_keys=True).encode())
    for group in files:
        for f in group:
            st = f.stat()
            h.update(f"|{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _clear(out: Path) -> None:
    for name in (PARTIAL, "data", "jsonl", "filter_configs"):
        shutil.rmtree(out / name, ignore_errors=True)
    for f in [out / REPORT, out / "README.md", out / "mix_config.yaml", *out.glob("lengths_*.png")]:
        f.unlink(missing_ok=True)


def _prepare(cfg: MixConfig, out: Path, fp: str) -> dict[str, Any] | None:
    """The finished report when ``out`` already holds this mix; else a clean or resumable work folder."""
    report, mark = out / REPORT, out / PARTIAL / "fingerprint"
    prev = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else None
    if cfg.overwrite:
        _clear(out)
    elif prev is not None and prev.get("fingerprint") == fp:
        return prev
    elif prev is not None or (mark.is_file() and mark.read_text().strip() != fp):
        raise ConfigError(f"{out}: holds a {'finished' if prev else 'unfinished'} mix with a different config or "
                          "inputs; use another output_dir or overwrite: true")
    (out / PARTIAL).mkdir(parents=True, exist_ok=True)
    write_text_atomic(mark, fp + "\n")
    return None


def _pass1(cfg: MixConfig, files: list[list[Path]], work: Path, workers: int) -> list[Any]:
    from tqdm.auto import tqdm

    from pipeline.mix.scan import load_scan, save_scan, scan_source
    from pipeline.mix.write import Spiller

    scans = []
    for i, (src, group) in enumerate(zip(cfg.sources, files)):
        scan = load_scan(work, i)
        if scan is None:
            spill = Spiller(work, i, cfg.seed)
            with tqdm(desc=f"mix pass 1: {src.name}", unit="rec", mininterval=1.0) as bar:
                scan = scan_source(group, cfg.near_dedup, workers, cfg.chunk_mb << 20, bar, spill)
            spill.close()  # durable before the scan that vouches for it
            save_scan(scan, work, i)
            scan = load_scan(work, i)
        scans.append(scan)
    return scans


def _plan(cfg: MixConfig, scans: list[Any], work: Path) -> Any:
    from pipeline.mix.plan import Plan, make_plan

    path = work / "plan.npz"
    if path.is_file():
        with np.load(path) as z:
            meta = json.loads(z["meta"].tobytes())
            return Plan(bucket=z["bucket"], pos=z["pos"], status=z["status"], buckets=meta["buckets"], stats=meta["stats"])
    plan = make_plan(scans, cfg)
    meta = np.frombuffer(json.dumps({"buckets": plan.buckets, "stats": plan.stats}).encode(), np.uint8)
    tmp = work / ".plan.npz.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, bucket=plan.bucket, pos=plan.pos, status=plan.status, meta=meta)
    tmp.replace(path)
    return plan


def _write(cfg: MixConfig, scans: list[Any], plan: Any, work: Path, workers: int) -> list[dict[str, Any]]:
    from tqdm.auto import tqdm

    from pipeline.mix.pool import ordered_map
    from pipeline.mix.write import gather_shard, shard_tasks

    (work / "data").mkdir(exist_ok=True)
    names = [s.name for s in cfg.sources]
    tasks = [(t, work, names, cfg.row_group_rows, cfg.jsonl) for t in shard_tasks(plan, scans, cfg.seed)]
    shards = []
    with tqdm(total=len(tasks), desc="mix: shards", unit="shard") as bar:
        for _, res in ordered_map(gather_shard, tasks, min(workers, len(tasks))):
            shards.append(res)
            bar.update(1)
    return shards


def _filter_configs(cfg: MixConfig, reports: dict[str, Any], out: Path) -> dict[str, str]:
    """Each source's filter config (from its report.json) as ``filter_configs/<name>.yaml``, rerunnable."""
    written = {}
    for s in cfg.sources:
        conf = (reports.get(s.name) or {}).get("config")
        if isinstance(conf, dict):
            name = f"filter_configs/{s.name}.yaml"
            write_text_atomic(out / name, f"# distill filter --config {name}\n"
                              + yaml.safe_dump(conf, sort_keys=False, allow_unicode=True))
            written[s.name] = name
    return written


def _commands(cfg: MixConfig, reports: dict[str, Any], filter_cfgs: dict[str, str]) -> list[str]:
    lines = []
    if cfg.command:
        lines += ["# the sources"] + cfg.command.strip().splitlines()
    for s in cfg.sources:
        rep = reports.get(s.name) or {}
        for inp in rep.get("inputs", [])[:1]:
            gen_cfg = Path(inp).parent / "config.yaml"
            if gen_cfg.is_file():
                lines.append(f"distill generate --config {gen_cfg}   # {s.name}: teacher samples")
        if rep.get("command"):
            lines.append(f"{rep['command']}   # {s.name}: filter")
        elif s.name in filter_cfgs:
            lines.append(f"distill filter --config {filter_cfgs[s.name]}   # {s.name}: filter (config from its report)")
    lines.append("distill mix --config mix_config.yaml   # this corpus (its resolved config, flags included, "
                 "is saved next to it)")
    return lines


def _finalize(cfg: MixConfig, out: Path, work: Path, scans: list[Any], plan: Any, shards: list[dict[str, Any]],
              fp: str, seconds: float) -> dict[str, Any]:
    from pipeline.mix.card import write_card
    from pipeline.mix.sources import filter_report
    from pipeline.mix.summary import length_charts, summarize

    for sub in ("data", "jsonl"):
        if (work / sub).is_dir():
            (out / sub).mkdir(exist_ok=True)
            for f in sorted((work / sub).glob(f"*.{'parquet' if sub == 'data' else 'jsonl'}")):
                f.replace(out / sub / f.name)
    summary = summarize(scans, plan, cfg)
    summary["sources"] = plan.stats["sources"]
    pngs, lengths = length_charts(scans, plan, out)
    reports = {s.name: filter_report(s.path) for s in cfg.sources}
    write_text_atomic(out / "mix_config.yaml", "# distill mix --config mix_config.yaml\n"
                      + yaml.safe_dump(cfg.model_dump(mode="json", exclude={"overwrite", "hub"}), sort_keys=False))
    write_text_atomic(out / "README.md", write_card(cfg, summary, shards, reports, _commands(cfg, reports, _filter_configs(cfg, reports, out)), pngs))
    report = {"fingerprint": fp, "output_dir": str(out), **summary, "completion_tokens": lengths,
              "shards": shards, "seconds": round(seconds, 1)}
    write_json_atomic(out / REPORT, report)
    shutil.rmtree(work, ignore_errors=True)
    return report


def run(cfg: MixConfig) -> dict[str, Any]:
    """Mix ``cfg.sources`` into ``cfg.output_dir`` (resuming unfinished work); returns the report."""
    from pipeline.mix.hub import check_hub, push
    from pipeline.mix.pool import worker_count
    from pipeline.mix.sources import source_files

    t0 = time.perf_counter()
    check_hub(cfg.hub)  # before any work: an offline push fails in a second
    files = [source_files(s.path) for s in cfg.sources]
    out = cfg.output()
    workers = worker_count(cfg.workers)
    with output_lock(out, "mix"):
        fp = _fingerprint(cfg, files)
        report = _prepare(cfg, out, fp)
        if report is not None:
            log.info("mix: %s already holds this finished mix; nothing to do", out)
        else:
            work = out / PARTIAL
            scans = _pass1(cfg, files, work, workers)
            plan = _plan(cfg, scans, work)
            shards = _write(cfg, scans, plan, work, workers)
            report = _finalize(cfg, out, work, scans, plan, shards, fp, time.perf_counter() - t0)
    if cfg.hub.repo_id:
        report["hub_url"] = push(cfg.hub, out)
    return report


def print_summary(report: dict[str, Any]) -> None:
    splits = ", ".join(f"{k} {v}" for k, v in report["splits"].items())
    print(f"mix: {splits} records in {len(report['shards'])} shard(s) -> {report['output_dir']}")
    for name, s in report["sources"].items():
        print(f"  {name:12s} input {s['input']:>8d}  exact dup {s['exact_duplicates']:>6d}  near dup "
              f"{s['near_duplicates']:>6d}  quota {s['quota']:>8d}  taken {s['selected']:>8d}")
    if report.get("hub_url"):
        print(f"  pushed to {report['hub_url']}")


FLAGS = {
    "--output": ("output_dir", str, "output folder"),
    "--seed": ("seed", int, "seed of sampling, split and shuffle"),
    "--total": ("total", int, "corpus size for `share` quotas"),
    "--jsonl": ("jsonl", "store_true", "also write JSONL shards"),
    "--workers": ("workers", int, "processes (0 = all cores)"),
    "--push-to-hub": ("hub.repo_id", str, "publish to this Hub dataset repo"),
    "--overwrite": ("overwrite", "store_true", "replace an existing mix in the output folder"),
}


def _main(args: Any) -> int:
    report = run(config_from_args(MixConfig, args, FLAGS))
    print_summary(report)
    return 0


def register(sub: Any) -> None:
    p = add_stage_parser(sub, "mix", MixConfig, "Mix filtered outputs into one corpus: quotas, cross-source dedup, "
                         "shuffle, validation split, Parquet shards, dataset card, optional Hub push", FLAGS)
    p.set_defaults(func=_main)
