"""Training data: render, mask, pack, collate (shared by ``distill sft`` and ``distill kd``).

Rules
-----
* **Render** every conversation with the student's chat template, or with ChatML when that
  template drops the ``<think>`` reasoning (:func:`pipeline.chat.training_template` decides and
  warns), so the whole reasoning is trained.
* **Mask**: only assistant turns are trained; everything else has label -100. An assistant turn
  is the text between the render of the conversation up to the turn with
  ``add_generation_prompt=True`` and the render including the turn, so any template works
  without ``{% generation %}`` markers. Inside a turn, training stops at (and includes) the
  turn's last *stop token* (the template's end-of-turn token, e.g. ``<|im_end|>``, and the
  tokenizer's EOS); trailing template text such as the ``\\n`` after ``<|im_end|>`` is not
  trained. A template that ends turns without any special token gets the EOS token inserted after
  the turn's last non-blank token, so the student always learns to stop. A token that straddles
  the start of a turn (e.g. ``" <"`` after ``"assistant: "``) is trained. The first token of every sample is never trained, so a
  packed row never learns to predict one sample from the end of another.
* **Drop, don't truncate**: a sample longer than ``max_seq_len`` is dropped and counted (a cut
  sample would lose its answer and its EOS).
* **Pack** (``packing: true``): best-fit-decreasing bins of ``max_seq_len`` tokens, built once;
  every epoch shuffles the bins. ``position_ids`` restart at 0 for each sample and there is no
  attention mask, so transformers builds a block-diagonal causal mask (sdpa/eager) or uses
  varlen flash-attention: no attention across sample boundaries. Padding waste is reported.
* **No packing**: length-grouped micro-batches (shuffle, sort by length inside mega-batches of
  50 micro-batches, shuffle the micro-batches), right padding with an attention mask.
* Rendering happens once, up front, on the main process, cached under
  ``output_dir/data_cache/`` keyed by the data files, tokenizer, template and ``max_seq_len``.

A plan is a list of micro-batches; a micro-batch is a list of rows; a row is a tuple of sample
indices (one index without packing). Plans depend only on (data, settings, seed, epoch), so
every rank computes the same plan and resume lands on the same micro-batches.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.chat import THINK_CLOSE, split_think, training_template
from pipeline.config import ConfigError
from pipeline.records import RecordError, iter_records, messages_of, split_files

__all__ = ["Corpus", "Renderer", "chat_template_for_training", "load_conversations", "build_corpus", "plan_epoch",
           "micro_batch_tokens", "collate", "to_device", "model_inputs", "next_token_targets", "padding_stats",
           "check_packing_support", "preflight", "show_trained"]

log = logging.getLogger(__name__)
DATA_VERSION = 1  # bump when rendering/masking rules change (invalidates caches)
from pipeline.train.losses import IGNORE_INDEX  # the one definition (labels not trained)
MEGA_BATCH = 50


def chat_template_for_training(tokenizer: Any) -> str:
    """The tokenizer's template when it keeps ``<think>`` reasoning, else ChatML (with a warning)."""
    return training_template(tokenizer)


# --------------------------------------------------------------------------- loading

def load_conversations(data: list[str], split: str = "train", limit: int = 0) -> Iterator[tuple[str, list[dict], tuple[str, int]]]:
    """Yield ``(key, messages, (source, line))`` from files/folders or ``hf:NAME`` datasets.

    ``key`` is the record's ``id`` when present (what offline caches key on), else ``source:line``.
    Records may hold ``messages`` or a ``prompt``/``completion`` pair of strings.
    """
    n = 0
    for item in data:
        if str(item).startswith("hf:"):
            import datasets

            name = str(item)[3:]
            try:
                ds = datasets.load_dataset(name, split=split)
            except Exception as exc:  # offline, unknown name, ...
                raise ConfigError(f"data: hf:{name}: cannot load split {split!r} ({exc})") from None
            rows = ((f"hf:{name}", i + 1, rec) for i, rec in enumerate(ds))
        else:
            rows = ((loc.path, loc.line, loc.record) for loc in iter_records(split_files(item, split)))
        for path, line, rec in rows:
            msgs = _messages(rec, path, line)
            key = str(rec["id"]) if rec.get("id") is not None else f"{path}:{line}"
            yield key, msgs, (path, line)
            n += 1
            if limit and n >= limit:
                return


def _messages(rec: dict, path: str, line: int) -> list[dict]:
    if "messages" not in rec and isinstance(rec.get("prompt"), str) and isinstance(rec.get("completion"), str):
        return [{"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": rec["completion"]}]
    msgs = messages_of(rec, (path, line))
    if not any(m["role"] == "assistant" for m in msgs):
        raise RecordError(path, line, "no assistant turn to train on", field="messages")
    return msgs


# --------------------------------------------------------------------------- rendering + masking

class Renderer:
    """Renders conversations to ``(input_ids, trained)`` with the mask rules in the module doc."""

    def __init__(self, tokenizer: Any, template: str):
        self.tok = tokenizer
        self.template = template
        self.special_ids = set(tokenizer.all_special_ids) | {
            i for i, t in tokenizer.added_tokens_decoder.items() if getattr(t, "special", False)}
        self.stop_ids, self.append_eos = self._find_stop_ids()

    def _apply(self, msgs: list[dict], gen: bool) -> str:
        if not msgs:
            return ""
        return self.tok.apply_chat_template(msgs, chat_template=self.template, tokenize=False,
                                            add_generation_prompt=gen)

    def _find_stop_ids(self) -> tuple[list[int], bool]:
        """The end-of-turn token (first special token after an assistant turn's content) + EOS."""
        eos = self.tok.eos_token_id
        probe = "PROBE_ANSWER_41c9"
        msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}]
        full = self._apply(msgs, False)
        tail = full[full.index(probe) + len(probe):] if probe in full else ""
        ids = self.tok(tail, add_special_tokens=False)["input_ids"] if tail else []
        turn_end = next((i for i in ids if i in self.special_ids), None)
        stops = [i for i in dict.fromkeys([turn_end, eos]) if i is not None]
        if turn_end is None:
            log.warning("the chat template ends assistant turns without a special token; appending EOS %r to "
                        "every assistant turn so the student learns to stop", self.tok.eos_token)
        return stops, turn_end is None

    def render(self, messages: list[dict], where: tuple[str, int] = ("<record>", 0)) -> tuple[list[int], list[bool]]:
        text = self._apply(messages, False)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prefix = self._apply(messages[:i], True)
            upto = self._apply(messages[:i + 1], False)
            if not (upto.startswith(prefix) and text.startswith(upto)):
                raise RecordError(where[0], where[1], f"the chat template does not render turn {i} as a prefix of the "
                                  "conversation (cannot locate the assistant tokens)", field=f"messages[{i}]")
            spans.append((len(prefix), len(upto)))
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(enc["input_ids"])
        starts = [s for s, _ in enc["offset_mapping"]]
        ends = [e for _, e in enc["offset_mapping"]]
        trained = [False] * len(ids)
        inserts = []
        for a, b in spans:
            lo = bisect.bisect_right(ends, a)  # first token reaching into the turn (may straddle its start)
            hi = bisect.bisect_left(starts, b)
            last_stop = max((j for j in range(lo, hi) if ids[j] in self.stop_ids), default=None)
            if last_stop is not None:
                hi = last_stop + 1
            elif self.append_eos:  # end the turn at its last non-blank token, then EOS
                while hi > lo and not text[starts[hi - 1]:ends[hi - 1]].strip():
                    hi -= 1
                inserts.append(hi)
            for j in range(lo, hi):
                trained[j] = True
        for pos in reversed(inserts):
            ids.insert(pos, self.tok.eos_token_id)
            trained.insert(pos, True)
        if trained:
            trained[0] = False
        return ids, trained


@dataclass
class Corpus:
    """Rendered samples as flat arrays: ``ids[offsets[i]:offsets[i+1]]`` is sample ``i``."""

    ids: np.ndarray  # int32, all samples concatenated
    trained: np.ndarray  # bool, same length
    offsets: np.ndarray  # int64, len = samples + 1
    keys: list[str]
    stop_ids: list[int]
    dropped_too_long: int = 0
    fingerprint: str = ""
    lengths: np.ndarray = field(init=False)
    trained_counts: np.ndarray = field(init=False)
    bins: dict[int, list[tuple[int, ...]]] = field(default_factory=dict, repr=False)  # packed rows per capacity

    def __post_init__(self) -> None:
        self.lengths = np.diff(self.offsets).astype(np.int64)
        self.trained_counts = np.add.reduceat(self.trained.astype(np.int64), self.offsets[:-1]) \
            if len(self.keys) else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.keys)

    def sample(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.ids[a:b], self.trained[a:b]

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, ids=self.ids, trained=self.trained, offsets=self.offsets,
                 meta=np.frombuffer(json.dumps({"keys": self.keys, "stop_ids": self.stop_ids,
                                                "dropped_too_long": self.dropped_too_long}).encode(), dtype=np.uint8))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "Corpus":
        with np.load(path) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            return cls(ids=z["ids"], trained=z["trained"], offsets=z["offsets"], keys=meta["keys"],
                       stop_ids=meta["stop_ids"], dropped_too_long=meta["dropped_too_long"])


def _cache_key(cfg: Any, tokenizer: Any, template: str) -> str:
    h = hashlib.sha256()
    h.update(f"v{DATA_VERSION}|{cfg.max_seq_len}|{cfg.max_samples}|{cfg.data_split}|{template}".encode())
    h.update(f"|{tokenizer.name_or_path}|{len(tokenizer)}|{tokenizer.eos_token}".encode())
    tok_file = Path(str(tokenizer.name_or_path)) / "tokenizer.json"
    if tok_file.is_file():
        h.update(f"|{tok_file.stat().st_size}|{tok_file.stat().st_mtime_ns}".encode())
    for item in cfg.data:
        if str(item).startswith("hf:"):
            h.update(f"|{item}".encode())
            continue
        for p in split_files(item, cfg.data_split):
            st = p.stat()
            h.update(f"|{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


_WORKER: dict[str, Any] = {}  # per worker process: its Renderer (set by the pool initializer)


def _init_worker(tokenizer: Any, template: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER["renderer"] = Renderer(tokenizer, template)


def _render_chunk(chunk: list[tuple[str, list[dict], tuple[str, int]]]) -> list[tuple[str, list[int], list[bool], tuple[str, int]]]:
    r = _WORKER["renderer"]
    return [(key, *r.render(msgs, where), where) for key, msgs, where in chunk]


def _chunks(rows: Iterator, size: int) -> Iterator[list]:
    buf = []
    for row in rows:
        buf.append(row)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def render_corpus(cfg: Any, tokenizer: Any, template: str, progress: bool = False) -> Corpus:
    """Render and tokenize every sample, in order; ``data_workers`` > 1 uses a process pool."""
    renderer = Renderer(tokenizer, template)
    ids_parts, tr_parts, offsets, keys = [], [], [0], []
    dropped = 0
    rows = load_conversations(cfg.data, cfg.data_split, cfg.max_samples)
    workers = int(getattr(cfg, "data_workers", 1) or 1)
    pool = None
    if workers > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(tokenizer, template))
        rendered = (x for chunk in pool.imap(_render_chunk, _chunks(rows, 64)) for x in chunk)
    else:
        rendered = ((key, *renderer.render(msgs, where), where) for key, msgs, where in rows)
    if progress:
        from tqdm.auto import tqdm

        rendered = tqdm(rendered, desc="render + tokenize", unit="sample")
    try:
        for key, ids, trained, where in rendered:
            if len(ids) > cfg.max_seq_len:
                dropped += 1
                continue
            if not any(trained):
                raise RecordError(where[0], where[1], "no trained tokens after rendering (empty assistant turn?)",
                                  field="messages")
            ids_parts.append(np.asarray(ids, dtype=np.int32))
            tr_parts.append(np.asarray(trained, dtype=bool))
            offsets.append(offsets[-1] + len(ids))
            keys.append(key)
    finally:
        if pool is not None:
            pool.terminate()
    if not keys:
        raise ConfigError(f"data {cfg.data}: no usable samples ({dropped} longer than max_seq_len={cfg.max_seq_len})")
    if dropped:
        log.warning("dropped %d of %d samples longer than max_seq_len=%d", dropped, dropped + len(keys), cfg.max_seq_len)
    return Corpus(ids=np.concatenate(ids_parts), trained=np.concatenate(tr_parts),
                  offsets=np.asarray(offsets, dtype=np.int64), keys=keys, stop_ids=renderer.stop_ids,
                  dropped_too_long=dropped)


def build_corpus(cfg: Any, tokenizer: Any, template: str, accelerator: Any = None) -> Corpus:
    """Render once (main process), cache to ``output_dir/data_cache/<key>.npz``, load on every rank."""
    key = _cache_key(cfg, tokenizer, template)
    path = Path(cfg.output_dir) / "data_cache" / f"{key}.npz"
    is_main = accelerator is None or accelerator.is_main_process
    if is_main and not path.exists():
        corpus = render_corpus(cfg, tokenizer, template, progress=getattr(cfg, "progress", False))
        path.parent.mkdir(parents=True, exist_ok=True)
        corpus.save(path)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    corpus = Corpus.load(path)
    plan_key = f"{key}|{cfg.packing}|{cfg.max_seq_len}|{cfg.micro_batch_size}|{cfg.seed}"
    corpus.fingerprint = hashlib.sha256(plan_key.encode()).hexdigest()[:20]
    return corpus


# --------------------------------------------------------------------------- plans

def pack_bins(lengths: np.ndarray, capacity: int) -> list[tuple[int, ...]]:
    """Best-fit decreasing: each sample (longest first) goes to the fullest bin it still fits."""
    order = sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (remaining capacity, bin id)
    for i in order:
        n = int(lengths[i])
        j = bisect.bisect_left(free, (n, -1))
        if j < len(free):
            rem, b = free.pop(j)
            bins[b].append(i)
            bisect.insort(free, (rem - n, b))
        else:
            bins.append([i])
            bisect.insort(free, (capacity - n, len(bins) - 1))
    return [tuple(b) for b in bins]


def plan_epoch(corpus: Corpus, cfg: Any, epoch: int) -> list[list[tuple[int, ...]]]:
    """Micro-batches for one epoch (same on every rank for the same seed/epoch)."""
    rng = np.random.default_rng([cfg.seed, epoch])
    mbs = cfg.micro_batch_size
    if cfg.packing:
        if cfg.max_seq_len not in corpus.bins:
            corpus.bins[cfg.max_seq_len] = pack_bins(corpus.lengths, cfg.max_seq_len)
        bins = corpus.bins[cfg.max_seq_len]
        order = rng.permutation(len(bins))
        rows = [bins[i] for i in order]
        return [rows[k:k + mbs] for k in range(0, len(rows), mbs)]
    perm = rng.permutation(len(corpus))
    mega = mbs * MEGA_BATCH
    mbatches = []
    for k in range(0, len(perm), mega):
        chunk = sorted(perm[k:k + mega].tolist(), key=lambda i: -int(corpus.lengths[i]))
        mbatches.extend([[(i,) for i in chunk[j:j + mbs]] for j in range(0, len(chunk), mbs)])
    order = rng.permutation(len(mbatches))
    return [mbatches[i] for i in order]


def micro_batch_tokens(corpus: Corpus, mb: list[tuple[int, ...]]) -> int:
    """Trained tokens in a micro-batch (= ``(labels[:, 1:] != -100).sum()`` of its collated batch)."""
    return int(sum(int(corpus.trained_counts[i]) for row in mb for i in row))


def _row_len(corpus: Corpus, row: tuple[int, ...]) -> int:
    return int(sum(int(corpus.lengths[i]) for i in row))


def padding_stats(corpus: Corpus, plan: list[list[tuple[int, ...]]], cfg: Any) -> dict:
    """Share of the positions computed that are padding, for one epoch's plan."""
    real = computed = 0
    for mb in plan:
        lens = [_row_len(corpus, r) for r in mb]
        real += sum(lens)
        computed += max(lens) * len(lens)
    return {"real_tokens": real, "computed_tokens": computed,
            "padding_fraction": 1.0 - real / computed if computed else 0.0,
            "trained_tokens": int(corpus.trained_counts.sum())}


# --------------------------------------------------------------------------- batches

def collate(corpus: Corpus, mb: list[tuple[int, ...]], pad_id: int, packing: bool) -> dict:
    """Tensors for one micro-batch (see the batch contract in :mod:`pipeline.train.loop`)."""
    import torch

    lens = [_row_len(corpus, r) for r in mb]
    T = max(lens)
    B = len(mb)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    keys, spans = [], []
    for b, row in enumerate(mb):
        pos = 0
        row_keys, row_spans = [], []
        for i in row:
            ids, tr = corpus.sample(i)
            n = len(ids)
            t_ids = torch.from_numpy(ids.astype(np.int64))
            input_ids[b, pos:pos + n] = t_ids
            lab = t_ids.clone()
            lab[~torch.from_numpy(tr)] = IGNORE_INDEX
            labels[b, pos:pos + n] = lab
            position_ids[b, pos:pos + n] = torch.arange(n)
            row_keys.append(corpus.keys[i])
            row_spans.append((pos, n))
            pos += n
        if pos < T:  # padding: its own position run, never trained
            position_ids[b, pos:] = torch.arange(T - pos)
        keys.append(row_keys)
        spans.append(row_spans)
    cu, max_len = _document_bounds(spans, T)
    batch = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids,
             "num_tokens": micro_batch_tokens(corpus, mb), "sample_keys": keys, "sample_spans": spans,
             "cu_seqlens": cu, "max_seqlen": max_len}
    if not packing:
        mask = torch.zeros((B, T), dtype=torch.long)
        for b, n in enumerate(lens):
            mask[b, :n] = 1
        batch["attention_mask"] = mask
    return batch


def _document_bounds(spans: list[list[tuple[int, int]]], T: int) -> tuple[Any, int]:
    """``cu_seqlens`` over the flattened ``[B * T]`` batch (every sample, and every row's padding
    tail, is its own document) and the longest document: what varlen attention needs."""
    import torch

    bounds, longest = [0], 1
    for b, row in enumerate(spans):
        end = 0
        for pos, n in row:
            bounds.append(b * T + pos + n)
            longest = max(longest, n)
            end = pos + n
        if end < T:
            bounds.append((b + 1) * T)
            longest = max(longest, T - end)
    return torch.tensor(bounds, dtype=torch.int32), longest


def to_device(batch: dict, device: Any) -> dict:
    return {k: (v.to(device, non_blocking=True) if hasattr(v, "to") else v) for k, v in batch.items()}


def model_inputs(batch: dict) -> dict:
    """The keyword arguments for the model's forward (no labels: losses are computed outside)."""
    out = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    if "attention_mask" in batch:
        out["attention_mask"] = batch["attention_mask"]
    if batch.get("varlen"):
        from pipeline.train.attention import batch_kwargs

        out.update(batch_kwargs(batch))
    return out


def next_token_targets(batch: dict) -> tuple[Any, Any]:
    """``(positions [P], targets [B, P])``: sequence positions whose next token is trained in some
    row, and those next tokens (-100 where that row does not train it). Pass ``positions`` as the
    model's ``logits_to_keep`` so prompt positions never reach the LM head."""
    nxt = batch["labels"][:, 1:]
    positions = (nxt != IGNORE_INDEX).any(0).nonzero().squeeze(1)
    return positions, nxt[:, positions]


def check_packing_support(cfg: Any, attn: str) -> None:
    """Packing needs an attention that honours position-id resets: flash-attention varlen, or
    transformers' packed-sequence masks for sdpa/eager (transformers >= 4.55)."""
    if not cfg.packing or attn.startswith("flash") or attn == "distill_varlen":
        return
    try:
        from transformers.masking_utils import find_packed_sequence_indices  # noqa: F401
    except ImportError:
        raise ConfigError(f"packing with attn_implementation={attn!r} needs a transformers version that builds "
                          "block-diagonal masks from position_ids (>= 4.55); upgrade, install flash-attn, "
                          "or set packing: false") from None


# --------------------------------------------------------------------------- preflight

def show_trained(tokenizer: Any, ids: list[int] | np.ndarray, trained: list[bool] | np.ndarray,
                 max_chars: int = 1200) -> str:
    """The rendered sample with trained spans wrapped in ``⟦...⟧``."""
    parts, cur, run = [], None, []
    for t, m in zip(list(ids), list(trained)):
        if cur is not None and bool(m) != cur:
            txt = tokenizer.decode(run)
            parts.append(f"⟦{txt}⟧" if cur else txt)
            run = []
        cur = bool(m)
        run.append(int(t))
    if run:
        txt = tokenizer.decode(run)
        parts.append(f"⟦{txt}⟧" if cur else txt)
    text = "".join(parts)
    if len(text) > max_chars:
        half = max_chars // 2
        text = text[:half] + f"\n... [{len(text) - max_chars} chars] ...\n" + text[-half:]
    return text


def _norm(s: str) -> str:
    return " ".join(s.split())


def sample_problems(tokenizer: Any, renderer: Renderer, messages: list[dict], ids: list[int],
                    trained: list[bool]) -> list[str]:
    """What is wrong with one rendered sample: empty mask, lost reasoning, untrained EOS."""
    problems = []
    if not any(trained):
        return ["no trained tokens (empty assistant mask)"]
    if all(t in renderer.stop_ids for t, m in zip(ids, trained) if m):
        return ["empty assistant turn: only the stop token is trained"]
    trained_text = _norm(tokenizer.decode([t for t, m in zip(ids, trained) if m]))
    for m in messages:
        if m["role"] != "assistant":
            continue
        reasoning, _ = split_think(m["content"])
        if reasoning is not None and reasoning.strip() and _norm(reasoning) not in trained_text:
            problems.append("the <think> reasoning of an assistant turn is not in the trained tokens")
        elif THINK_CLOSE in m["content"] and THINK_CLOSE not in trained_text:
            problems.append("the </think> marker is not trained")
    # every trained run must end on a stop token
    for j in range(len(ids)):
        if trained[j] and (j + 1 == len(ids) or not trained[j + 1]) and ids[j] not in renderer.stop_ids:
            problems.append(f"a trained assistant turn ends on {tokenizer.decode([ids[j]])!r}, not on a stop token "
                            f"{[tokenizer.decode([s]) for s in renderer.stop_ids]} (EOS not trained)")
            break
    return problems


def preflight(cfg: Any, tokenizer: Any, template: str, out: Any = None) -> dict:
    """Render ``cfg.check_samples`` samples, print them with trained tokens marked, list problems.

    ``ok`` is False when any sample has an empty mask, lost its think block, or does not train EOS.
    """
    import sys

    out = out or sys.stdout
    renderer = Renderer(tokenizer, template)
    own = getattr(tokenizer, "chat_template", None)
    report: dict[str, Any] = {"template": "tokenizer's own" if template == own else "project ChatML (fallback)",
                              "stop_tokens": [tokenizer.decode([s]) for s in renderer.stop_ids], "samples": [],
                              "problems": []}
    print(f"template: {report['template']}; stop tokens trained: {report['stop_tokens']}", file=out)
    for key, msgs, where in load_conversations(cfg.data, cfg.data_split, cfg.check_samples):
        ids, trained = renderer.render(msgs, where)
        probs = sample_problems(tokenizer, renderer, msgs, ids, trained)
        n_tr = int(sum(trained))
        report["samples"].append({"key": key, "tokens": len(ids), "trained_tokens": n_tr,
                                  "too_long": len(ids) > cfg.max_seq_len, "problems": probs})
        report["problems"].extend(f"{where[0]}:{where[1]}: {p}" for p in probs)
        print(f"\n=== {key} ({where[0]}:{where[1]}): {len(ids)} tokens, {n_tr} trained "
              f"({100 * n_tr / max(len(ids), 1):.0f}%){' [longer than max_seq_len: dropped]' if len(ids) > cfg.max_seq_len else ''}",
              file=out)
        print(show_trained(tokenizer, ids, trained), file=out)
        for p in probs:
            print(f"  PROBLEM: {p}", file=out)
    report["ok"] = bool(report["samples"]) and not report["problems"]
    print(f"\npreflight {'OK' if report['ok'] else 'FAILED'}: {len(report['samples'])} samples, "
          f"{len(report['problems'])} problems (trained tokens shown in ⟦...⟧)", file=out)
    return report
