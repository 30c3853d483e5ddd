"""Offline teacher: top-k log-probabilities per trained token, keyed by sample id, on disk.

``distill kd cache --config kd.yaml`` runs the teacher once over the corpus that ``distill kd``
will train on (same rendering, masking and ``max_seq_len``: it calls the SFT data path) and
writes ``teacher_cache/``; ``distill kd`` with ``teacher_cache:`` set then trains without loading
the teacher, streaming the rows of each micro-batch's samples from disk.

Layout (``part`` = writer rank, so several processes can fill one cache)::

    manifest.json        format, teacher, k, kd_temperature, logprob dtype, vocab size
                         (+ feature_layers, feature_width, feature_dtype with ``features:``)
    topk-<part>.bin      per sample: ids int32 [n, k], then log-probs [n, k + 1] (last = rest bucket)
    index-<part>.jsonl   {"id", "part", "offset", "n", "crc"} per finished sample
    feat-<part>.bin      (with ``features:``) per sample: teacher hidden states [n, layers, width]
    feat-index-<part>.jsonl  its index, same fields
    summary.json         counts and bytes, written when every sample is done

``n`` is the sample's trained-token count (targets at positions 1..len-1 whose label is trained,
in order) and ``crc`` the CRC-32 of those target ids, so training refuses a cache built from other
data, another template or another ``max_seq_len``. Log-probs are at the training temperature
(``kd_temperature``): a top-k cannot be re-tempered, so a different temperature is an error.
The rest bucket ``log(1 - sum p_topk)`` keeps the tail mass explicit (see
:mod:`pipeline.train.losses`).

Crash safety: a sample's bytes are appended and fsynced BEFORE its index line (itself appended +
fsynced by :class:`~pipeline.records.ShardWriter`). On reopen the index's torn tail is repaired
and the ``.bin`` is truncated to the end of the last indexed sample, so a kill at any byte loses
only unfinished samples and never indexes a partial one; a rerun skips the indexed ids.

Size: ``trained tokens x (4 k + (k + 1) x 2)`` bytes with float16 log-probs (k = 64: 394 bytes per
token, ~0.4 GB per million trained tokens); features add ``layers x width x 2`` bytes per token
(4 layers of a 3584-wide teacher: 28.7 KB per token, ~29 GB per million), so their size is
checked against ``features.cache_max_gb`` before anything is written. ``summary.json`` reports
the actual figure. Both kinds are written by one generic crash-safe store (:class:`RowStoreWriter`).
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import ConfigError
from pipeline.records import ShardWriter, read_jsonl, write_json_atomic

__all__ = ["FORMAT", "sample_targets", "RowStoreWriter", "RowStore", "TopKCacheWriter", "TopKCache", "FeatureCache",
           "build_cache"]

FORMAT = "distill-r1/kd-topk-v1"
FEATURE_STEM, FEATURE_INDEX = "feat", "feat-index"
log = logging.getLogger(__name__)


def sample_targets(ids: np.ndarray, trained: np.ndarray) -> np.ndarray:
    """The trained next-token targets of one rendered sample, in order (int32)."""
    return np.asarray(ids[1:][trained[1:]], dtype=np.int32)


def _crc(targets: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(targets, dtype=np.int32).tobytes())


def _check_manifest(root: Path, want: dict[str, Any]) -> None:
    path = root / "manifest.json"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, want)
        return
    have = json.loads(path.read_text(encoding="utf-8"))
    diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
    if diff:
        shown = "; ".join(f"{k}: cache has {a!r}, config wants {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(f"{path}: teacher cache was built with other settings ({shown}); "
                          "use another teacher_cache folder or delete this one")


class RowStoreWriter:
    """Append-only, crash-safe per-sample arrays for one part: ``<stem>-<part>.bin`` holds, per
    sample of ``n`` trained tokens, one array ``[n, *shape]`` per ``layout`` entry ``(shape, dtype)``;
    ``<index>-<part>.jsonl`` one line per finished sample. ``done`` = sample ids complete on disk."""

    def __init__(self, root: str | Path, part: int, layout: list[tuple[tuple[int, ...], str]],
                 stem: str = "topk", index: str = "index"):
        self.root = Path(root)
        self.layout = [(tuple(shape), np.dtype(dt)) for shape, dt in layout]
        self.index = ShardWriter(self.root / f"{index}-{part}.jsonl", key=lambda r: r["id"])
        self.part = part
        self.bin_path = self.root / f"{stem}-{part}.bin"
        end = 0
        if self.index.path.exists():
            for rec in read_jsonl(self.index.path):
                end = max(end, rec["offset"] + self._nbytes(rec["n"]))
        self.bin = open(self.bin_path, "ab")
        if self.bin_path.stat().st_size > end:  # bytes of a sample whose index line never landed
            self.bin.truncate(end)
            os.fsync(self.bin.fileno())
        self.bin.seek(0, os.SEEK_END)
        self.bytes_written = 0

    @property
    def done(self) -> set:
        return self.index.done

    def _nbytes(self, n: int) -> int:
        return sum(n * int(np.prod(shape)) * dt.itemsize for shape, dt in self.layout)

    def write(self, samples: list[tuple]) -> None:
        """``samples``: ``(id, targets [n], *arrays)`` with arrays ``[n, *shape]`` in layout order;
        durable on return."""
        records = []
        for key, targets, *arrays in samples:
            if key in self.index.done:
                continue
            n = len(targets)
            shapes = [a.shape for a in arrays]
            if shapes != [(n, *shape) for shape, _ in self.layout]:
                raise ValueError(f"sample {key!r}: shapes {shapes} do not match n={n} and layout {self.layout}")
            offset = self.bin.tell()
            for arr, (_, dt) in zip(arrays, self.layout):
                self.bin.write(np.ascontiguousarray(arr, dtype=dt).tobytes())
            records.append({"id": key, "part": self.part, "offset": offset, "n": n, "crc": _crc(targets)})
            self.bytes_written += self._nbytes(n)
        if records:
            self.bin.flush()
            os.fsync(self.bin.fileno())
            self.index.write(records)

    def close(self) -> None:
        self.bin.close()
        self.index.close()

    def __enter__(self) -> "RowStoreWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TopKCacheWriter(RowStoreWriter):
    """The top-k part writer: per token ``k`` int32 ids and ``k + 1`` log-probs."""

    def __init__(self, root: str | Path, part: int, k: int, logprob_dtype: str):
        super().__init__(root, part, [((k,), "int32"), ((k + 1,), logprob_dtype)])
        self.k, self.dtype = k, np.dtype(logprob_dtype)


class RowStore:
    """Reader of a :class:`RowStoreWriter`'s parts: memory-maps them, looks samples up by id."""

    def __init__(self, root: str | Path, layout: list[tuple[tuple[int, ...], str]], stem: str = "topk",
                 index: str = "index"):
        self.root = Path(root)
        self.layout = [(tuple(shape), np.dtype(dt)) for shape, dt in layout]
        self.entries: dict[str, dict] = {}
        self._maps: dict[int, np.memmap | None] = {}
        for idx in sorted(self.root.glob(f"{index}-*.jsonl")):
            for rec in read_jsonl(idx):
                self.entries[rec["id"]] = rec
        for part in {e["part"] for e in self.entries.values()}:
            path = self.root / f"{stem}-{part}.bin"
            self._maps[part] = np.memmap(path, dtype=np.uint8, mode="r") if path.stat().st_size else None

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> list[np.ndarray]:
        """One array ``[n, *shape]`` per layout entry for sample ``key``."""
        e = self.entries[key]
        buf, a, out = self._maps[e["part"]], e["offset"], []
        for shape, dt in self.layout:
            size = e["n"] * int(np.prod(shape)) * dt.itemsize
            out.append(np.frombuffer(buf[a:a + size], dtype=dt).reshape(e["n"], *shape))
            a += size
        return out

    def check_corpus(self, corpus: Any, what: str) -> None:
        """Every corpus sample must be stored, with the same trained targets (count and CRC)."""
        missing = [k for k in corpus.keys if k not in self.entries]
        if missing:
            raise ConfigError(f"{what} {self.root}: {len(missing)} of {len(corpus)} samples missing "
                              f"(e.g. {missing[:3]}); run `distill kd cache` with this config to finish it")
        for i, key in enumerate(corpus.keys):
            ids, trained = corpus.sample(i)
            targets = sample_targets(ids, trained)
            e = self.entries[key]
            if e["n"] != len(targets) or e["crc"] != _crc(targets):
                raise ConfigError(f"{what} {self.root}: sample {key!r} has {e['n']} cached tokens (crc "
                                  f"{e['crc']}) but the data gives {len(targets)} (crc {_crc(targets)}); the cache "
                                  "was built from other data, template or max_seq_len: rebuild it")


class TopKCache:
    """Reader: memory-maps every part, looks samples up by id; ``rows(keys)`` for one micro-batch."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if not mpath.is_file():
            raise ConfigError(f"teacher_cache {self.root}: no manifest.json (not a `distill kd cache` output)")
        self.manifest = json.loads(mpath.read_text(encoding="utf-8"))
        if self.manifest.get("format") != FORMAT:
            raise ConfigError(f"{mpath}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        self.k = int(self.manifest["k"])
        self.dtype = np.dtype(self.manifest["logprob_dtype"])
        self.store = RowStore(self.root, [((self.k,), "int32"), ((self.k + 1,), self.manifest["logprob_dtype"])])
        self.entries = self.store.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(ids [n, k] int32, logprobs [n, k + 1] float32)`` of one sample."""
        ids, lp = self.store.get(key)
        return ids, lp.astype(np.float32)

    def rows(self, keys: list[str]):
        """The cache rows of ``keys`` concatenated in order, as a :class:`~pipeline.train.losses.TopK`."""
        import torch

        from pipeline.train.losses import TopK

        parts = [self.get(k) for k in keys]
        if not parts:
            return TopK(torch.zeros(0, self.k, dtype=torch.long), torch.zeros(0, self.k + 1))
        return TopK(torch.from_numpy(np.concatenate([p[0] for p in parts])).long(),
                    torch.from_numpy(np.concatenate([p[1] for p in parts])))

    def validate(self, corpus: Any, temperature: float, vocab_size: int) -> None:
        """Every corpus sample must be in the cache with the same trained targets; settings must match."""
        if float(self.manifest["kd_temperature"]) != float(temperature):
            raise ConfigError(f"{self.root / 'manifest.json'}: cache holds teacher log-probs at kd_temperature="
                              f"{self.manifest['kd_temperature']}, config trains at {temperature}; a top-k cache "
                              "cannot be re-tempered: rebuild it or use the same kd_temperature")
        if int(self.manifest["vocab_size"]) != int(vocab_size):
            raise ConfigError(f"{self.root / 'manifest.json'}: vocab_size {self.manifest['vocab_size']} != "
                              f"student tokenizer's {vocab_size}")
        self.store.check_corpus(corpus, "teacher_cache")


class FeatureCache:
    """The teacher's hidden states at the mapped layers, per trained token (``feat-<part>.bin``):
    ``[n, layers, width]`` per sample; layers and width are in the teacher cache's manifest."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        m = json.loads((self.root / "manifest.json").read_text(encoding="utf-8"))
        if not m.get("feature_layers"):
            raise ConfigError(f"teacher_cache {self.root}: built without features; rebuild it with `features:` set")
        self.layers, self.width = list(m["feature_layers"]), int(m["feature_width"])
        self.store = RowStore(self.root, [((len(self.layers), self.width), m["feature_dtype"])], FEATURE_STEM,
                              FEATURE_INDEX)

    def rows(self, keys: list[str]):
        """``[N, layers, width]`` float32 rows of ``keys`` concatenated in order."""
        import torch

        parts = [self.store.get(k)[0] for k in keys]
        if not parts:
            return torch.zeros(0, len(self.layers), self.width)
        return torch.from_numpy(np.concatenate(parts).astype(np.float32))


def _part() -> tuple[int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _feature_writer(cfg: Any, root: Path, rank: int, layers: list[int] | None, width: int, tokens: int):
    """The feature part writer (or None), after checking the cache's size against its bound."""
    if not layers:
        return None
    dtype = np.dtype(cfg.features.cache_dtype)
    size = tokens * len(layers) * width * dtype.itemsize
    if size > cfg.features.cache_max_gb * 1e9:
        raise ConfigError(f"features.cache_max_gb: caching {len(layers)} teacher layers x {width} wide x {tokens:,} "
                          f"trained tokens needs {size / 1e9:.1f} GB > {cfg.features.cache_max_gb} GB; map fewer "
                          "layers, raise the bound, or train with the live teacher (no teacher_cache)")
    return RowStoreWriter(root, rank, [((len(layers), width), dtype.name)], FEATURE_STEM, FEATURE_INDEX)


def _teacher_rows(cfg: Any, corpus: Any, group: list[int], hidden_states: Any, head: tuple, vocab: int,
                  layers: list[int] | None) -> tuple[list, list, int]:
    """Top-k rows (and mapped-layer feature rows) of each sample of one teacher batch."""
    import torch

    from pipeline.train.losses import teacher_topk

    weight, bias = head
    hidden = hidden_states[-1]
    top_out, feat_out, tokens = [], [], 0
    for row, i in enumerate(group):
        ids, trained = corpus.sample(i)
        targets = sample_targets(ids, trained)
        pos = torch.from_numpy(np.nonzero(trained[1:])[0]).to(hidden.device)
        h = hidden[row, pos]
        t_ids, t_lp = [], []
        for a in range(0, len(pos), cfg.kd_chunk_size):
            logits = torch.nn.functional.linear(h[a:a + cfg.kd_chunk_size], weight, bias)
            top = teacher_topk(logits, cfg.cache.k, cfg.kd_temperature)
            t_ids.append(top.ids.cpu())
            t_lp.append(top.logprobs.cpu())
        top_out.append((corpus.keys[i], targets, torch.cat(t_ids).numpy(), torch.cat(t_lp).numpy()))
        if layers:
            feats = torch.stack([hidden_states[layer][row, pos] for layer in layers], dim=1)
            feat_out.append((corpus.keys[i], targets, feats.float().cpu().numpy()))
        tokens += len(targets)
    return top_out, feat_out, tokens


def build_cache(cfg: Any, feature_layers: list[int] | None = None) -> dict:
    """Run the teacher over ``cfg``'s corpus and fill ``cfg.teacher_cache`` (resumable): top-k
    log-probs, and with ``feature_layers`` the teacher's hidden states at those layers."""
    import contextlib

    import torch

    from pipeline.train import data as D
    from pipeline.train.loop import load_tokenizer
    from pipeline.train.models import load_teacher, hidden_states
    from pipeline.train.tokenizer_check import check_vocab

    if not cfg.teacher_cache:
        raise ConfigError("teacher_cache: required for `distill kd cache` (the folder to write)")
    root = Path(cfg.teacher_cache)
    rank, world = _part()
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg)
    template = D.chat_template_for_training(tokenizer)
    device = torch.device(cfg.teacher_device or ("cuda" if torch.cuda.is_available() else "cpu"))
    teacher, t_tok = load_teacher(cfg, device)
    check = check_vocab(t_tok, tokenizer, teacher.get_output_embeddings().weight.shape[0], None)
    vocab = check.vocab_size
    width = teacher.config.hidden_size
    manifest = {"format": FORMAT, "teacher": str(cfg.teacher), "k": cfg.cache.k, "kd_temperature": cfg.kd_temperature,
                "logprob_dtype": cfg.cache.logprob_dtype, "vocab_size": vocab, "max_seq_len": cfg.max_seq_len}
    if feature_layers:
        manifest.update(feature_layers=list(feature_layers), feature_width=width,
                        feature_dtype=cfg.features.cache_dtype, teacher_num_layers=teacher.config.num_hidden_layers)
    _check_manifest(root, manifest)
    corpus = D.build_corpus(cfg, tokenizer, template)
    mine = [i for i in range(len(corpus)) if i % world == rank]
    t0 = time.perf_counter()
    tokens = 0
    head = teacher.get_output_embeddings()
    head = (head.weight[:vocab], None if getattr(head, "bias", None) is None else head.bias[:vocab])
    mine_tokens = sum(len(sample_targets(*corpus.sample(i))) for i in mine)
    fwriter = _feature_writer(cfg, root, rank, feature_layers, width, mine_tokens)
    with TopKCacheWriter(root, rank, cfg.cache.k, cfg.cache.logprob_dtype) as writer, \
            (fwriter or contextlib.nullcontext()):
        todo = [i for i in mine if corpus.keys[i] not in writer.done
                or (fwriter is not None and corpus.keys[i] not in fwriter.done)]
        todo.sort(key=lambda i: -int(corpus.lengths[i]))  # similar lengths per batch: less padding
        progress = None
        if cfg.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(mine), initial=len(mine) - len(todo), desc="distill kd cache", unit="sample")
        for start in range(0, len(todo), cfg.cache.batch_size):
            group = todo[start:start + cfg.cache.batch_size]
            batch = D.to_device(D.collate(corpus, [(i,) for i in group], pad_id=tokenizer.pad_token_id,
                                          packing=False), device)
            with torch.no_grad():
                states = hidden_states(teacher, batch, layers=True)
                top_rows, feat_rows, n = _teacher_rows(cfg, corpus, group, states, head, vocab, feature_layers)
            tokens += n
            writer.write(top_rows)
            if fwriter is not None:
                fwriter.write(feat_rows)
            if progress is not None:
                progress.update(len(group))
        if progress is not None:
            progress.close()
        written = writer.bytes_written + (fwriter.bytes_written if fwriter is not None else 0)
    return _finish_cache(cfg, root, corpus, rank, world, len(todo), tokens, written, time.perf_counter() - t0,
                         vocab, check.warnings, feature_layers)


def _finish_cache(cfg: Any, root: Path, corpus: Any, rank: int, world: int, done_now: int, tokens: int, written: int,
                  elapsed: float, vocab: int, warnings: list, feature_layers: list[int] | None) -> dict:
    summary = {"stage": "kd cache", "teacher_cache": str(root), "samples": len(corpus), "part": rank,
               "parts": world, "samples_this_run": done_now, "trained_tokens_this_run": tokens,
               "bytes_this_run": written, "bytes_per_token": written / tokens if tokens else None,
               "elapsed_s": round(elapsed, 3), "tokens_per_s": tokens / elapsed if elapsed > 0 else None,
               "k": cfg.cache.k, "kd_temperature": cfg.kd_temperature, "vocab_size": vocab,
               "feature_layers": feature_layers, "warnings": warnings}
    cache = TopKCache(root)
    complete = all(k in cache.entries for k in corpus.keys)
    if feature_layers:
        feats = FeatureCache(root)
        complete = complete and all(k in feats.store.entries for k in corpus.keys)
    summary["complete"] = complete
    summary["cached_samples"] = len(cache)
    if rank == 0:
        write_json_atomic(root / "summary.json", summary)
    log.info("kd cache: %d samples (%d this run, %d trained tokens, %.1f MB) in %.1fs -> %s", len(cache), done_now,
             tokens, written / 1e6, elapsed, root)
    return summary
