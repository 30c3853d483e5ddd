"""The typed config of ``distill mix`` (validated once, at load).

A quota per source is exactly one of:

* ``count``: take this many records;
* ``fraction``: take this share of the source's records that survive deduplication (1.0 = all);
* ``share``: take this share of the mix's ``total`` (shares of all sources sum to at most 1).

A source with fewer records than its quota gives all it has (with a warning, and the shortfall in
``mix_report.json``) unless ``strict_quotas`` is set, in which case the run stops before writing.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from pipeline.config import Section, StageConfig

__all__ = ["SourceConfig", "NearDedupConfig", "HubConfig", "MixConfig"]


class SourceConfig(Section):
    """One filtered output folder (or files) with its quota."""

    name: str = Field(..., description="short name of the source (a column in the corpus; e.g. math, code, general)")
    path: str = Field(..., description="a filter output folder (reads its kept.jsonl and report.json) or a file")
    count: int | None = Field(None, ge=0, description="records to take")
    fraction: float | None = Field(None, gt=0.0, le=1.0, description="share of the source's deduplicated records")
    share: float | None = Field(None, gt=0.0, le=1.0, description="share of the mix's total")

    @model_validator(mode="after")
    def _one_quota(self) -> "SourceConfig":
        given = [k for k in ("count", "fraction", "share") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"source {self.name!r}: give one of count, fraction, share (got {', '.join(given)})")
        if not given:
            self.fraction = 1.0
        return self

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or not value.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"{value!r}: use letters, digits, '-' and '_' only")
        return value


class NearDedupConfig(Section):
    """Near duplicates across sources: MinHash LSH over prompt + the response's first words."""

    enabled: bool = Field(True, description="remove near duplicates (exact duplicates are always removed)")
    threshold: float = Field(0.9, gt=0.0, le=1.0, description="estimated Jaccard at or above which two records are one")
    num_perm: int = Field(128, ge=16, le=512, description="MinHash bins (one-permutation hashing; filters/dedup.py's count)")
    shingle_words: int = Field(5, ge=1, description="words per shingle (filters/dedup.py's default)")
    window_words: int = Field(256, ge=16, description="response words hashed (the prompt is always whole): two "
                              "independent samples diverge within a few sentences, a copy does not")
    bands: int = Field(16, ge=2, description="LSH bands (num_perm must be a multiple)")

    @model_validator(mode="after")
    def _bands_divide(self) -> "NearDedupConfig":
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm {self.num_perm} is not a multiple of bands {self.bands}")
        return self


class HubConfig(Section):
    """Optional publishing to the Hugging Face Hub (checked before any work is done)."""

    repo_id: str | None = Field(None, description="dataset repo to push to (null: do not push)")
    private: bool = Field(True, description="create the repo private")
    token_env: str = Field("HF_TOKEN", description="env var holding the token (else the huggingface-cli login)")


class MixConfig(StageConfig):
    """``distill mix``: several filtered outputs -> one corpus (Parquet shards + dataset card)."""

    sources: list[SourceConfig] = Field(..., min_length=1, description="the filtered outputs, in priority order "
                                        "(a duplicate keeps the copy from the earliest source)")
    output_dir: str = Field("runs/corpus", description="output folder (data/*.parquet, README.md, mix_report.json)")
    total: int | None = Field(None, ge=1, description="corpus size that `share` quotas refer to")
    seed: int = Field(0, description="seed of sampling, the split and the shuffle")
    validation_fraction: float = Field(0.01, ge=0.0, lt=1.0, description="share of each source held out as 'validation'")
    strict_quotas: bool = Field(False, description="stop when a source cannot fill its quota")
    near_dedup: NearDedupConfig = Field(default_factory=NearDedupConfig, description="near-duplicate removal")
    shard_mb: int = Field(256, ge=1, description="target size of a shard's records as JSON (MB); sets the shard count")
    row_group_rows: int = Field(1000, ge=1, description="Parquet row group size")
    jsonl: bool = Field(False, description="also write data/<split>-….jsonl next to each Parquet shard")
    workers: int = Field(0, ge=0, description="processes (0 = all cores)")
    chunk_mb: int = Field(16, ge=1, description="input read per task (MB)")
    license: str = Field("other", description="license in the dataset card (e.g. mit, apache-2.0, cc-by-4.0)")
    pretty_name: str | None = Field(None, description="dataset card title")
    command: str | None = Field(None, description="the commands that made the sources (copied into the card)")
    overwrite: bool = Field(False, description="replace a finished or different mix in output_dir")
    hub: HubConfig = Field(default_factory=HubConfig, description="push to the Hugging Face Hub")

    @model_validator(mode="after")
    def _check(self) -> "MixConfig":
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source names must be unique (repeated: {', '.join(dup)})")
        shares = [s.share for s in self.sources if s.share is not None]
        if shares and self.total is None:
            raise ValueError("sources with `share` need `total`")
        if sum(shares) > 1.0 + 1e-9:
            raise ValueError(f"shares sum to {sum(shares):.3f} > 1")
        return self

    def output(self) -> Path:
        return Path(self.output_dir)
