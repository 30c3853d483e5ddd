"""Typed configs: unknown keys, bad values and --set overrides fail with the file and the dotted key."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, load_config, parse_override
from pipeline.generate.stage import GenerateConfig


def _write(tmp_path, text: str):
    p = tmp_path / "gen.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_valid_file_with_defaults_and_nested_values(tmp_path):
    cfg = load_config(GenerateConfig, _write(tmp_path, "model: m\nbackend: transformers\nsampling:\n  n: 4\n"))
    assert cfg.sampling.n == 4
    assert (cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.max_tokens) == (0.6, 0.95, 32768)
    assert cfg.force_think is True and cfg.input.default_domain == "math"


def test_unknown_nested_key_names_file_key_and_known_keys(tmp_path):
    path = _write(tmp_path, "model: m\nsampling:\n  nn: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(GenerateConfig, path)
    msg = str(err.value)
    assert str(path) in msg and "sampling.nn: unknown key" in msg
    assert "max_tokens" in msg and "temperature" in msg  # the known keys are listed


def test_unknown_top_level_key(tmp_path):
    path = _write(tmp_path, "model: m\nbatchsize: 3\n")
    with pytest.raises(ConfigError, match=r"gen\.yaml: batchsize: unknown key"):
        load_config(GenerateConfig, path)


def test_bad_type_and_bad_choice(tmp_path):
    with pytest.raises(ConfigError, match=r"sampling\.n: .*(integer|int).*'four'"):
        load_config(GenerateConfig, _write(tmp_path, "model: m\nsampling: {n: four}\n"))
    with pytest.raises(ConfigError, match=r"backend: "):
        load_config(GenerateConfig, _write(tmp_path, "model: m\nbackend: tgi\n"))
    with pytest.raises(ConfigError, match=r"sampling\.top_p"):
        load_config(GenerateConfig, _write(tmp_path, "model: m\nsampling: {top_p: 1.5}\n"))


def test_missing_required_key(tmp_path):
    with pytest.raises(ConfigError, match=r"gen\.yaml: model: Field required"):
        load_config(GenerateConfig, _write(tmp_path, "backend: vllm\n"))


def test_set_overrides_file_and_flags_override_set(tmp_path):
    path = _write(tmp_path, "model: m\nsampling: {n: 2}\n")
    cfg = load_config(GenerateConfig, path, ["sampling.n=4", "vllm.tensor_parallel_size=2", "system_prompt=null"],
                      {"output_dir": "out", "shard_index": None})
    assert cfg.sampling.n == 4 and cfg.vllm.tensor_parallel_size == 2 and cfg.output_dir == "out"
    assert cfg.shard_index == 0  # a None flag value does not override


def test_set_unknown_key_and_malformed_set(tmp_path):
    path = _write(tmp_path, "model: m\n")
    with pytest.raises(ConfigError, match=r"\(with --set\): sampling\.temprature: unknown key"):
        load_config(GenerateConfig, path, ["sampling.temprature=0.7"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("sampling.n")
    with pytest.raises(ConfigError, match="is not a section"):
        load_config(GenerateConfig, path, ["model.x=1"])


def test_override_values_parse_as_yaml():
    assert parse_override("sampling.n=4") == (["sampling", "n"], 4)
    assert parse_override("force_think=false") == (["force_think"], False)
    assert parse_override("template={math: plain}") == (["template"], {"math": "plain"})


def test_unknown_template_and_shard_range_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"template: .*domain 'math'.*'nope' not found"):
        load_config(GenerateConfig, _write(tmp_path, "model: m\ntemplate: {math: nope}\n"))
    with pytest.raises(ConfigError, match="shard_index 3 must be < num_shards 2"):
        load_config(GenerateConfig, _write(tmp_path, "model: m\nshard_index: 3\nnum_shards: 2\n"))


def test_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(GenerateConfig, _write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(GenerateConfig, tmp_path / "absent.yaml")
