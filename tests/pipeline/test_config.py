"""params.yaml -> typed stage configs: strict keys, strict types, two profiles."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from helpers import TINY_PARAMS, write_params

from pluralign.config import PolicyPretrainConfig, stage_config_class
from pluralign.pipeline.config import ConfigError, StageConfig, load_stage_config, notebook_sections
from pluralign.pipeline.paths import project_root

SECTIONS = sorted(set(notebook_sections().values()))


@pytest.mark.parametrize("stage", SECTIONS)
@pytest.mark.parametrize("profile", ["cpu", "paper"])
def test_repo_params_load_for_every_stage_and_profile(stage: str, profile: str) -> None:
    config = load_stage_config(stage, project_root() / "params.yaml", profile)
    assert isinstance(config, stage_config_class(stage))
    assert config.profile == profile


def test_stage_configs_are_found_in_config_or_their_own_module() -> None:
    assert stage_config_class("policy_pretrain") is PolicyPretrainConfig
    external = stage_config_class("maxmin_tulu2")
    assert external.__module__ == "pluralign.stage_configs.maxmin_tulu2"
    assert issubclass(external, StageConfig)
    with pytest.raises(ConfigError, match="unknown stage 'no_such_stage'"):
        stage_config_class("no_such_stage")


def test_notebook_sections_come_from_dvc_yaml(tmp_path: Path) -> None:
    sections = notebook_sections()
    assert sections["04_maxmin_ppo_gpt2"] == "maxmin_gpt2"
    assert sections["05_maxmin_ppo_tulu2"] == "maxmin_tulu2"
    bad = tmp_path / "dvc.yaml"
    bad.write_text("stages:\n  s:\n    cmd: x\n    params: [profile, a, b]\n")
    assert notebook_sections(bad) == {"s": "a"}  # its own section first, then shared ones
    bad.write_text("stages:\n  s:\n    cmd: x\n    params: [profile]\n")
    with pytest.raises(ConfigError, match="stage s lists no params section"):
        notebook_sections(bad)


def test_profile_overrides_shared_keys() -> None:
    cpu = load_stage_config("policy_pretrain", None, "cpu")
    paper = load_stage_config("policy_pretrain", None, "paper")
    assert isinstance(cpu, PolicyPretrainConfig) and isinstance(paper, PolicyPretrainConfig)
    assert (cpu.init_from, paper.init_from) == ("scratch", "gpt2")
    assert cpu.block_size == 128 and paper.block_size == 256  # paper overrides a shared key
    assert cpu.temperature == paper.temperature  # shared


def test_default_profile_comes_from_the_file(tmp_path: Path) -> None:
    params = copy.deepcopy(TINY_PARAMS)
    params["profile"] = "paper"
    params["policy_pretrain"]["paper"] = dict(params["policy_pretrain"]["cpu"], init_from="gpt2")
    path = write_params(tmp_path / "p.yaml", params)
    assert load_stage_config("policy_pretrain", path).profile == "paper"


def _broken(tmp_path: Path, mutate) -> Path:
    params = copy.deepcopy(TINY_PARAMS)
    mutate(params)
    return write_params(tmp_path / "params.yaml", params)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p["policy_pretrain"].update(n_layers=3), r"policy_pretrain\.n_layers: unknown"),
        (
            lambda p: p["policy_pretrain"]["cpu"].update(lr=0.1),
            r"policy_pretrain\.lr: unknown",
        ),
        (  # typo in the profile that is *not* running is caught too
            lambda p: p["policy_pretrain"]["paper"].update(max_step=3),
            r"policy_pretrain\.paper\.max_step: unknown",
        ),
        (
            lambda p: p["policy_pretrain"]["cpu"].update(max_steps="ten"),
            r"policy_pretrain\.max_steps: expected an integer",
        ),
        (
            lambda p: p["policy_pretrain"]["cpu"].update(max_steps=2.5),
            r"policy_pretrain\.max_steps: expected an integer",
        ),
        (
            lambda p: p["policy_pretrain"]["cpu"].update(bf16="yes"),
            r"policy_pretrain\.bf16: expected true/false",
        ),
        (
            lambda p: p["policy_pretrain"].update(temperature="hot"),
            r"policy_pretrain\.temperature: expected a number",
        ),
        (
            lambda p: p["policy_pretrain"]["cpu"].update(max_merges="all"),
            r"policy_pretrain\.max_merges",
        ),
        (lambda p: p["policy_pretrain"].pop("seed"), r"policy_pretrain\.seed: missing key"),
        (lambda p: p.pop("policy_pretrain"), r"policy_pretrain: section missing"),
        (lambda p: p.update(profile="gpu"), r"profile: 'gpu' is not one of"),
        (lambda p: p.update(policy_pretrain=[1, 2]), r"policy_pretrain: must be a mapping"),
    ],
)
def test_bad_params_name_the_key(tmp_path: Path, mutate, message: str) -> None:
    path = _broken(tmp_path, mutate)
    with pytest.raises(ConfigError, match=message):
        load_stage_config("policy_pretrain", path)


def test_float_fields_accept_ints_and_yaml_exponent_strings(tmp_path: Path) -> None:
    path = _broken(tmp_path, lambda p: p["policy_pretrain"]["cpu"].update(learning_rate="1e-4"))
    assert load_stage_config("policy_pretrain", path).learning_rate == pytest.approx(1e-4)
    path = _broken(tmp_path, lambda p: p["policy_pretrain"].update(temperature=1))
    config = load_stage_config("policy_pretrain", path)
    assert config.temperature == 1.0 and isinstance(config.temperature, float)


def test_missing_or_invalid_params_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params file not found"):
        load_stage_config("policy_pretrain", tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: [cpu\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_stage_config("policy_pretrain", bad)
    with pytest.raises(ConfigError, match="unknown stage"):
        load_stage_config("no_such_stage", bad)
