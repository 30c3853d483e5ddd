"""FSDP2 (torch ``fully_shard`` through Accelerate) on two real CPU processes over gloo, against DDP.

``configs/accelerate/fsdp2_cpu_2proc.yaml`` runs ``distill sft`` with parameters, gradients and
optimizer state sharded over 2 ranks; ``configs/accelerate/cpu_2proc.yaml`` runs the same global
batch (2 ranks x grad_accum 1) under DDP. Same data, same seed, same steps: the saved weights must
agree to float32 reduction-order noise (measured max |diff| 2.9e-6 after 4 steps at lr 1e-3, where
every tensor moved by > 1e-3; asserted: atol 2e-5, rtol 1e-5, as for DDP vs one process).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_sft import REPO, _free_port, assert_same_weights, make_cfg, weights, write_corpus

from pipeline.train.sft import SFTConfig, run

STEPS, SAVE_EVERY = 4, 2


def launch(accelerate_config: str, sft_yaml: Path, *extra: str, num_processes: int | None = None) -> None:
    """``accelerate launch --config_file configs/accelerate/<accelerate_config> -m pipeline.cli sft``
    on 2 CPU processes (ACCELERATE_USE_CPU=true is what makes them CPU/gloo ranks)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "configs" / "accelerate" / accelerate_config), "--main_process_port", str(_free_port()),
           *(["--num_processes", str(num_processes)] if num_processes else []), "-m", "pipeline.cli", "sft", "--config", str(sft_yaml), *extra]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]


def summary(cfg: SFTConfig) -> dict:
    return json.loads((Path(cfg.output_dir) / "summary.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir) -> dict:
    """One FSDP2 run (checkpoint at step 2 of 4) and one DDP run of the same plan."""
    tmp = tmp_path_factory.mktemp("fsdp")
    data = tmp / "kept.jsonl"
    write_corpus(data, 40)
    out = {}
    for name, accel in (("fsdp", "fsdp2_cpu_2proc.yaml"), ("ddp", "cpu_2proc.yaml")):
        cfg, path = make_cfg(tmp, tiny_model_dir, name, data, grad_accum=1, max_steps=STEPS, save_every=SAVE_EVERY)
        launch(accel, path)
        out[name] = cfg
    out["tmp"], out["data"] = tmp, data
    return out


@pytest.mark.slow
def test_fsdp2_weights_match_ddp(runs, tiny_model_dir):
    fsdp, ddp = summary(runs["fsdp"]), summary(runs["ddp"])
    # it really was sharded: accelerate's FSDP checkpoint layout, one shard file per rank, and each
    # rank's parameter checksum covers its shard only (the two add up to the DDP model's)
    ckpt = Path(runs["fsdp"].output_dir) / "checkpoints" / f"step-{SAVE_EVERY:08d}" / "pytorch_model_fsdp_0"
    assert sorted(p.name for p in ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    by_rank = fsdp["param_checksum_by_rank"]
    assert by_rank[0] != by_rank[1]
    assert sum(by_rank) == pytest.approx(ddp["param_checksum_by_rank"][0], rel=1e-5)
    assert fsdp["world_size"] == ddp["world_size"] == 2 and fsdp["trained_tokens"] == ddp["trained_tokens"]
    assert fsdp["final_loss"] == pytest.approx(ddp["final_loss"], rel=1e-5)
    a, b, start = weights(fsdp["model_dir"]), weights(ddp["model_dir"]), weights(tiny_model_dir)
    assert min(float((a[k] - start[k]).abs().max()) for k in a) > 1e-3  # trained: far above the tolerance
    assert_same_weights(a, b, atol=2e-5)


@pytest.mark.slow
def test_fsdp2_final_model_is_whole_and_loads(runs, tiny_model_dir):
    """final/ is one unsharded safetensors file with exactly the original tensors and shapes (the tied
    lm_head stored once), and transformers loads it."""
    import torch
    from transformers import AutoModelForCausalLM

    final = Path(summary(runs["fsdp"])["model_dir"])
    saved, start = weights(final), weights(tiny_model_dir)
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in start.items()}
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    torch.testing.assert_close(model.model.norm.weight.detach(), saved["model.norm.weight"])
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


@pytest.mark.slow
def test_fsdp2_resume_from_sharded_checkpoint(runs):
    """A run resumed from the FSDP2 (sharded, distributed-checkpoint) step-2 checkpoint ends with the
    uninterrupted run's weights. It resumes under the shipped GPU config ``fsdp.yaml`` (2 processes;
    the sft config's ``dtype: fp32`` overrides its bf16), so that config is checked to run too, with
    its rank-0 loading (``fsdp_cpu_ram_efficient_loading``) and explicit layer class to wrap."""
    cfg, path = make_cfg(runs["tmp"], Path(runs["fsdp"].model), "resumed", runs["data"], grad_accum=1,
                         max_steps=STEPS, save_every=SAVE_EVERY)
    src = Path(runs["fsdp"].output_dir) / "checkpoints" / f"step-{SAVE_EVERY:08d}"
    shutil.copytree(src, Path(cfg.output_dir) / "checkpoints" / src.name)
    launch("fsdp.yaml", path, "--resume", num_processes=2)
    resumed = summary(cfg)
    assert resumed["resumed_from_step"] == SAVE_EVERY
    assert_same_weights(weights(resumed["model_dir"]), weights(summary(runs["fsdp"])["model_dir"]), atol=1e-6)


def test_tied_head_saved_once_in_bf16(tmp_path, tiny_model_dir):
    """Converting to the save dtype (or gathering FSDP shards) unshares tied tensors; final/ must still
    store the tied lm_head once, as the original model does (before the fix: 27 tensors, not 26)."""
    import torch

    data = tmp_path / "kept.jsonl"
    write_corpus(data, 8)
    cfg, _ = make_cfg(tmp_path, tiny_model_dir, "bf16", data, grad_accum=1, max_steps=1, save_dtype="bf16")
    saved = weights(run(cfg)["model_dir"])
    assert saved.keys() == weights(tiny_model_dir).keys() and "lm_head.weight" not in saved
    assert {v.dtype for v in saved.values()} == {torch.bfloat16}
