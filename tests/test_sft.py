"""``distill sft`` end to end on the tiny offline Qwen2: learning, exact masking, kill-and-resume,
LoRA merge, two-process DDP (equal to one process with the same global batch), CLI behaviour."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main as cli_main
from pipeline.tiny import CHATML_TEMPLATE
from pipeline.train.sft import SFTConfig, run

REPO = Path(__file__).resolve().parents[1]


def write_corpus(path: Path, n: int) -> None:
    """``n`` short synthetic R1-style traces (varied lengths), chat format with ids."""
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            a, b = 3 + i % 17, 11 + (7 * i) % 23
            steps = " ".join(f"Step {k}: {a} + {k} = {a + k}." for k in range(i % 9))
            fh.write(json.dumps({"id": f"t{i}", "messages": [
                {"role": "user", "content": f"What is {a} + {b}? Please reason step by step."},
                {"role": "assistant", "content": f"<think>\nAdd {a} and {b}. {steps}\n</think>\n\n"
                                                 f"The answer is \\boxed{{{a + b}}}."}]}) + "\n")


def make_cfg(tmp_path: Path, model_dir: Path, name: str, data: Path, **kw) -> tuple[SFTConfig, Path]:
    values = dict(model=str(model_dir), data=[str(data)], output_dir=str(tmp_path / name), max_seq_len=256,
                  micro_batch_size=2, grad_accum=2, max_steps=6, lr=1e-3, warmup_ratio=0.2, dtype="fp32",
                  log_every=1, progress=False, seed=7)
    values.update(kw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return SFTConfig(**values), path


def weights(model_dir: str | Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    import torch

    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def run_cli(args: list[str], env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture()
def corpus(tmp_path) -> Path:
    path = tmp_path / "kept.jsonl"
    write_corpus(path, 40)
    return path


def test_loss_goes_down_on_real_corpus(tmp_path, shared_data, tiny_model_dir):
    rows = [json.loads(x) for x in (shared_data / "math_train_sample2000.jsonl").read_text().splitlines()[:160]]
    data = tmp_path / "math.jsonl"
    with open(data, "w") as fh:
        for i, r in enumerate(rows):
            reasoning = (r.get("solution") or "")[:300]
            fh.write(json.dumps({"id": f"m{i}", "messages": [
                {"role": "user", "content": r["problem"]},
                {"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\nThe answer is \\boxed{{{r['answer']}}}."}]})
                + "\n")
    cfg, _ = make_cfg(tmp_path, tiny_model_dir, "real", data, max_seq_len=512, micro_batch_size=2, grad_accum=1,
                      max_steps=16, lr=3e-3, warmup_ratio=0.1)
    s = run(cfg)
    log = [json.loads(x) for x in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 17))
    first, last = log[0]["loss"], sum(r["loss"] for r in log[-4:]) / 4
    assert last < first - 0.8, (first, last)
    assert s["final_loss"] == log[-1]["loss"] and s["steps"] == 16 and s["trained_tokens"] == log[-1]["trained_tokens"]
    assert s["padding_fraction"] < 0.2  # packed rows (short rows: few samples per 512-token bin)
    assert all(r["grad_norm"] is not None and r["lr"] > 0 and r["tokens_per_s"] > 0 for r in log)
    assert (Path(cfg.output_dir) / "loss.png").stat().st_size > 1000
    # the final model is a plain transformers model with the training template and a stop token
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(s["model_dir"])
    tok = AutoTokenizer.from_pretrained(s["model_dir"])
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    eos = model.generation_config.eos_token_id
    assert im_end in (eos if isinstance(eos, list) else [eos])
    assert tok.chat_template == CHATML_TEMPLATE
    assert not any(k.startswith("base_model") for k in weights(s["model_dir"]))


def test_prompt_tokens_never_contribute(tmp_path, tiny_model_dir, corpus):
    """The stage's loss equals CE summed over the assistant tokens found independently
    (prompt length from a generation-prompt render; turn ends at <|im_end|>)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.train import data as D
    from pipeline.train.sft import causal_lm_loss

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg, _ = make_cfg(tmp_path, tiny_model_dir, "mask", corpus)
    c = D.build_corpus(cfg, tok, CHATML_TEMPLATE)
    mb = D.plan_epoch(c, cfg, 0)[0]
    batch = D.collate(c, mb, tok.pad_token_id, packing=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        got = causal_lm_loss(model, batch)
        logits = model(**D.model_inputs(batch)).logits
    msgs = {f"t{i}": m for i, m in enumerate(json.loads(x)["messages"] for x in corpus.read_text().splitlines())}
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    expected, n = 0.0, 0
    for r, (keys, spans) in enumerate(zip(batch["sample_keys"], batch["sample_spans"])):
        for key, (s, length) in zip(keys, spans):
            prompt = tok.apply_chat_template(msgs[key][:1], tokenize=False, add_generation_prompt=True)
            p = len(tok(prompt, add_special_tokens=False)["input_ids"])
            ids = batch["input_ids"][r, s:s + length].tolist()
            end = ids.index(im_end, p)  # the assistant's <|im_end|>
            for t in range(s + p, s + end + 1):  # assistant tokens incl. EOS
                expected += F.cross_entropy(logits[r, t - 1], batch["input_ids"][r, t]).item()
                n += 1
    assert got.num_tokens == n == batch["num_tokens"]
    assert got.loss_sum.item() == pytest.approx(expected, rel=1e-5)


def test_kill_and_resume_matches_uninterrupted(tmp_path, tiny_model_dir, corpus):
    cfg_a, _ = make_cfg(tmp_path, tiny_model_dir, "straight", corpus, save_every=2)
    a = run(cfg_a)
    cfg_b, yaml_b = make_cfg(tmp_path, tiny_model_dir, "killed", corpus, save_every=2)
    ckpts = Path(cfg_b.output_dir) / "checkpoints"
    # 1) SIGKILL while writing checkpoint 4: the half-written one is ignored, step-2 stays usable
    p = run_cli(["sft", "--config", str(yaml_b)], {"DISTILL_TEST_KILL": "checkpoint:4"})
    assert p.returncode == -9, p.stderr[-2000:]
    assert sorted(x.name for x in ckpts.iterdir()) == [".tmp-step-00000004", "step-00000002"]
    # 2) resume, killed right after step 5 (checkpoint 4 written this time)
    p = run_cli(["sft", "--config", str(yaml_b), "--resume"], {"DISTILL_TEST_KILL": "step:5"})
    assert p.returncode == -9, p.stderr[-2000:]
    assert "resuming from" in p.stderr and "step 2 of 6" in p.stderr
    # 3) resume to the end, in process
    b = run(cfg_b.model_copy(update={"resume": True}))
    assert b["resumed_from_step"] == 4 and b["steps"] == 6
    assert_same_weights(weights(a["model_dir"]), weights(b["model_dir"]))
    assert b["trained_tokens"] == a["trained_tokens"]
    log = [json.loads(x)["step"] for x in (Path(cfg_b.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4, 5, 6]  # no step lost or logged twice
    # a finished run resumes to its summary; a fresh run into it is refused (exit 2)
    assert run(cfg_b.model_copy(update={"resume": True}))["model_dir"] == b["model_dir"]
    assert cli_main(["sft", "--config", str(yaml_b)]) == 2


def test_lora_trains_only_adapters_and_merges(tmp_path, tiny_model_dir, corpus):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg, _ = make_cfg(tmp_path, tiny_model_dir, "lora", corpus, max_steps=3, lr=2e-2,
                      lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    s = run(cfg)
    assert 0 < s["trainable_params"] < s["total_params"] / 10
    out = Path(cfg.output_dir)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    base, merged = weights(tiny_model_dir), weights(s["model_dir"])
    assert set(merged) <= set(base) | {"lm_head.weight"}  # plain model, no lora_A/lora_B keys
    changed = [k for k in base if not torch.equal(base[k], merged[k])]
    assert changed and all(("q_proj.weight" in k or "v_proj.weight" in k) for k in changed)
    # the merged model computes what base + adapter computes
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7]])
    plain = AutoModelForCausalLM.from_pretrained(s["model_dir"], dtype=torch.float32).eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                                     out / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, peft(ids).logits, atol=1e-4, rtol=1e-4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_equals_one_process_with_accumulation(tmp_path, tiny_model_dir, corpus):
    """2 ranks x grad_accum 1 sees the same micro-batches per step as 1 rank x grad_accum 2, and the
    token normalisation spans both ranks, so the weights must match."""
    cfg_ddp, yaml_ddp = make_cfg(tmp_path, tiny_model_dir, "ddp", corpus, grad_accum=1, max_steps=3)
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "pipeline.cli", "sft", "--config", str(yaml_ddp)]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((Path(cfg_ddp.output_dir) / "summary.json").read_text())
    assert s["world_size"] == 2 and len(s["param_checksum_by_rank"]) == 2
    assert s["param_checksum_by_rank"][0] == s["param_checksum_by_rank"][1]
    cfg_one, _ = make_cfg(tmp_path, tiny_model_dir, "one", corpus, grad_accum=2, max_steps=3)
    one = run(cfg_one)
    assert one["trained_tokens"] == s["trained_tokens"]
    assert_same_weights(weights(one["model_dir"]), weights(s["model_dir"]), atol=2e-5)


def test_check_cli(tmp_path, tiny_model_dir, corpus, capsys):
    _, path = make_cfg(tmp_path, tiny_model_dir, "check", corpus)
    assert cli_main(["sft", "--config", str(path), "--check"]) == 0
    out = capsys.readouterr().out
    assert "preflight OK" in out and "⟦<think>" in out and "<|im_end|>⟧" in out
    # a corpus whose assistant turn is empty has nothing to train: preflight fails
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]})
                   + "\n")
    _, bad_cfg = make_cfg(tmp_path, tiny_model_dir, "check_bad", bad)
    assert cli_main(["sft", "--config", str(bad_cfg), "--check"]) == 1


def test_shipped_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    from pipeline.config import load_config

    sft = sorted((REPO / "configs" / "sft").glob("*.yaml"))
    assert len(sft) >= 2
    for f in sft:
        cfg = load_config(SFTConfig, f)
        assert f.read_text().startswith("#") and "sft --config" in f.read_text().split("\nmodel:")[0], f
        assert cfg.max_seq_len > 0
    kinds = {load_config_from_file(str(f)).distributed_type.value
             for f in (REPO / "configs" / "accelerate").glob("*.yaml")}
    assert {"NO", "MULTI_GPU", "FSDP", "DEEPSPEED"} <= kinds


def test_bf16_autocast_checkpointing_and_padded_batches(tmp_path, tiny_model_dir, corpus):
    """The other execution paths: bf16 autocast, gradient checkpointing, no packing (attention mask)."""
    import math

    cfg, _ = make_cfg(tmp_path, tiny_model_dir, "bf16", corpus, dtype="bf16", gradient_checkpointing=True,
                      packing=False, max_steps=3)
    s = run(cfg)
    assert s["mixed_precision"] == "bf16" and not s["packing"] and s["steps"] == 3
    assert math.isfinite(s["final_loss"]) and s["final_loss"] > 0
    assert s["padding_fraction"] > 0  # right-padded micro-batches
    saved = weights(s["model_dir"])  # saved in the training precision, not the fp32 master weights
    assert {t.dtype for t in saved.values()} == {__import__("torch").bfloat16}
    assert json.loads((Path(s["model_dir"]) / "config.json").read_text())["dtype"] == "bfloat16"
