"""The kd memory planner: exact parameter counts, the parts of the estimate, the one-line stop with
its suggestion under a fake small budget, and the estimate against measured CPU memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ConfigError
from pipeline.train.config import LoraConfig
from pipeline.train.memory_plan import estimate, model_facts, plan_or_stop
from tests.test_kd import _cfg

REPO = Path(__file__).resolve().parents[1]


def test_facts_count_parameters_exactly(tiny_model_dir, tiny_teacher_dir):
    from transformers import AutoModelForCausalLM

    for path, layers, hidden in ((tiny_model_dir, 2, 128), (tiny_teacher_dir, 3, 192)):
        facts = model_facts(str(path))
        real = AutoModelForCausalLM.from_pretrained(path)
        assert facts.params == sum(p.numel() for p in real.parameters())
        assert (facts.layers, facts.hidden, facts.intermediate) == (layers, hidden, 2 * hidden)


def test_estimate_parts(tmp_path, tiny_model_dir, tiny_teacher_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, tiny_teacher_dir, micro_batch_size=2, max_seq_len=64, kd_chunk_size=16)
    s, t = model_facts(str(tiny_model_dir)), model_facts(str(tiny_teacher_dir))
    est = estimate(cfg, s, t, "cpu")
    assert est.student_weights == 4 * s.params and est.grads_and_optimizer == 12 * s.params
    assert est.teacher_weights == 4 * t.params  # fp32 on CPU
    n = 2 * 64
    student_acts = 2 * n * (6 * 128 + 2 * 128 + 4 * 256) * 4 + 3 * n * 128 * 4
    assert est.activations == student_acts + 4 * n * 192 * 4
    assert est.loss == 16 * s.vocab * 16
    assert estimate(cfg, s, None, "cpu").teacher_weights == 0  # top-k cache: teacher never loaded
    lora = estimate(cfg.model_copy(update={"lora": LoraConfig(r=4, target_modules=["q_proj"])}), s, t, "cpu")
    assert lora.grads_and_optimizer == 12 * 2 * 4 * (128 + 128)
    # attention alignment: eager maps, 2 per student layer (kept for backward), 1 per teacher layer
    from pipeline.train.feature_kd import FeatureKDConfig

    attn = cfg.model_copy(update={"features": FeatureKDConfig(attention_weight=1.0)})
    maps = 2 * 64 * 64
    assert estimate(attn, s, t, "cpu").activations - est.activations == (2 * 2 * s.heads + 3 * t.heads) * maps * 4
    assert estimate(cfg.model_copy(update={"features": FeatureKDConfig()}), s, t, "cpu").activations == est.activations


def test_stops_with_one_line_suggestion(tmp_path, tiny_model_dir, tiny_teacher_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, tiny_teacher_dir, micro_batch_size=4)
    s, t = model_facts(str(tiny_model_dir)), model_facts(str(tiny_teacher_dir))
    full, no_teacher = estimate(cfg, s, t, "cpu").total, estimate(cfg, s, None, "cpu").total
    report = plan_or_stop(cfg, s, t, "cpu", budget=int(full / 0.9) + 1)
    assert report["est_total_gb"] == round(full / 1e9, 3)
    budget = int(no_teacher / 0.9) + 1  # fits only without the teacher
    with pytest.raises(ConfigError, match=r"^memory: estimated .* GB on cpu .*build the top-k teacher cache") as e:
        plan_or_stop(cfg, s, t, "cpu", budget=budget)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="train LoRA adapters"):  # no teacher to drop: LoRA is next
        plan_or_stop(cfg, s, None, "cpu", budget=int(estimate(
            cfg.model_copy(update={"lora": LoraConfig()}), s, None, "cpu").total / 0.9) + 1)
    with pytest.raises(ConfigError, match="no single change"):
        plan_or_stop(cfg, s, t, "cpu", budget=1000)
    # through `distill kd`: stops before anything but the output's lock file is written
    from pipeline.train.kd import run

    with pytest.raises(ConfigError, match="top-k teacher cache"):
        run(cfg.model_copy(update={"memory_budget_gb": budget / 1e9}))
    out = Path(cfg.output_dir)
    assert not out.exists() or {p.name for p in out.iterdir()} <= {".lock"}


MEASURE = """
import json, resource, sys
from pipeline.train.kd import KDConfig, run
cfg = KDConfig.model_validate(json.loads(sys.argv[1]))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
summary = run(cfg)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"measured": (after - before) * 1024, "plan": summary["memory_plan"]}))
"""


def test_estimate_matches_measured_cpu_memory(tmp_path, tiny_tokenizer_dir):
    """A pair whose weights dominate the process's own overhead (student 11M, teacher 36M params):
    peak RSS growth over the run vs the estimate. The planner must not under-estimate (measured <=
    1.35x the estimate); the ratio is printed. Measured 0.79x and 0.53x in two runs on the
    shared 2-core machine: under memory pressure the kernel reclaims file-backed pages (the mmapped
    safetensors), so peak RSS varies from run to run and the low side is loose on purpose."""
    from transformers import AutoTokenizer

    from pipeline.tiny import build_model

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    dirs = {}
    for name, hidden, layers in (("s", 512, 4), ("t", 768, 6)):
        dirs[name] = tmp_path / name
        tok.save_pretrained(dirs[name])
        build_model(tok, hidden_size=hidden, num_layers=layers, num_heads=8).save_pretrained(dirs[name])
    cfg = _cfg(tmp_path, dirs["s"], dirs["t"], max_steps=2, micro_batch_size=2, max_seq_len=256, dtype="fp32")
    p = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(cfg.model_dump(mode="json"))], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    est = out["plan"]["est_total_gb"] * 1e9
    print(f"estimated {est / 1e6:.0f} MB, measured peak RSS growth {out['measured'] / 1e6:.0f} MB, "
          f"ratio {out['measured'] / est:.2f}")
    # Only the safety side is asserted: peak-RSS growth read by getrusage was 0 in one full-suite run on the
    # loaded machine (pages reclaimed / peak reached before the run), so a low bound is not reliable here.
    assert out["measured"] <= 1.35 * est
