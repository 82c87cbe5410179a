"""params.yaml -> typed stage configs: strict keys, strict types, two profiles."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from helpers import TINY_PARAMS, write_params

from pluralign.experiments import maxmin_gpt2, maxmin_tulu2
from pluralign.pipeline.config import (
    ConfigError,
    StageConfig,
    deep_merge,
    load_stage_config,
    notebook_sections,
)
from pluralign.pipeline.paths import project_root
from pluralign.pipeline.runner import config_class
from pluralign.training.pretrain import PretrainConfig

SECTIONS = sorted(set(notebook_sections().values()))


@pytest.mark.parametrize("stage", SECTIONS)
@pytest.mark.parametrize("profile", ["cpu", "paper"])
def test_repo_params_load_for_every_stage_and_profile(stage: str, profile: str) -> None:
    cls = config_class(stage)
    config = load_stage_config(stage, cls, project_root() / "params.yaml", profile)
    assert isinstance(config, cls)
    assert config.profile == profile


def test_each_stage_config_lives_in_its_experiment_module() -> None:
    for section in SECTIONS:
        cls = config_class(section)
        assert issubclass(cls, StageConfig)
    assert config_class("maxmin_gpt2").__module__ == "pluralign.experiments.maxmin_gpt2"
    assert config_class("policy_pretrain") is PretrainConfig  # the recipe 05 reuses
    with pytest.raises(ConfigError, match=r"no module pluralign\.experiments\.no_such_stage"):
        config_class("no_such_stage")


def test_nested_sections_merge_deeply_and_become_typed_settings() -> None:
    cpu = load_stage_config("maxmin_gpt2", maxmin_gpt2.Config, None, "cpu")
    paper = load_stage_config("maxmin_gpt2", maxmin_gpt2.Config, None, "paper")
    # shared keys of the ppo section survive a profile that overrides others in it
    assert cpu.ppo.kl_coef == paper.ppo.kl_coef == 0.05
    assert (cpu.ppo.n_updates, paper.ppo.n_updates) == (40, 200)
    # a nested section of a stage's own type, typed like the yaml says
    assert isinstance(cpu.gentle_ppo, maxmin_gpt2.GentlePPO)
    assert (cpu.gentle_ppo.learning_rate, cpu.gentle_ppo.n_updates) == (1e-4, 60)
    assert (paper.gentle_ppo.learning_rate, paper.gentle_ppo.n_updates) == (7e-6, 300)
    assert type(cpu.gentle_ppo.n_updates) is int
    assert type(cpu.gentle_ppo.learning_rate) is float
    assert cpu.generation.max_new_tokens == 32


def test_fields_one_profile_does_not_use_may_be_left_out() -> None:
    cpu = load_stage_config("maxmin_tulu2", maxmin_tulu2.Config, None, "cpu")
    paper = load_stage_config("maxmin_tulu2", maxmin_tulu2.Config, None, "paper")
    assert cpu.proxy is not None and paper.proxy is None
    assert cpu.n_pref_prompts == 600 and paper.n_pref_prompts is None
    assert cpu.n_judge_prompts == 600 and paper.n_judge_prompts is None
    assert cpu.n_judge_comparisons is None and paper.n_judge_comparisons == 500
    assert cpu.psoups_files is None and paper.psoups_files == {
        "P1A": "rm_training/P1A.json",
        "P1B": "rm_training/P1B.json",
    }
    assert paper.psoups_columns == {
        "prompt": "user_input",
        "chosen": "completion_a",
        "rejected": "completion_b",
    }
    # the rule-based judge exists on synthetic data only; the paper judges by held-out RMs
    assert cpu.judges == ["ground_truth", "heldout_rm"] and paper.judges == ["heldout_rm"]
    assert (cpu.users_per_group, cpu.ratio) == (30, 10) and paper.users_per_group == 40


def test_nested_errors_name_the_whole_path(tmp_path: Path) -> None:
    params = copy.deepcopy(TINY_PARAMS)
    params["maxmin_gpt2"]["cpu"]["ppo"]["n_update"] = 3
    path = write_params(tmp_path / "p.yaml", params)
    with pytest.raises(ConfigError, match=r"maxmin_gpt2\.cpu\.ppo\.n_update: unknown key"):
        load_stage_config("maxmin_gpt2", maxmin_gpt2.Config, path)
    params = copy.deepcopy(TINY_PARAMS)
    params["maxmin_gpt2"]["cpu"]["ppo"]["batch_size"] = 5  # not a multiple of 2 minibatches
    path = write_params(tmp_path / "p.yaml", params)
    with pytest.raises(ConfigError, match=r"maxmin_gpt2\.ppo: batch_size must be a multiple"):
        load_stage_config("maxmin_gpt2", maxmin_gpt2.Config, path)
    params = copy.deepcopy(TINY_PARAMS)
    del params["maxmin_tulu2"]["cpu"]["proxy"]  # the proxy policy needs its shape
    path = write_params(tmp_path / "p.yaml", params)
    with pytest.raises(ConfigError, match="llama_proxy needs the proxy section"):
        load_stage_config("maxmin_tulu2", maxmin_tulu2.Config, path)


def test_deep_merge_recurses_into_mappings_only() -> None:
    base = {"a": {"x": 1, "y": 2}, "b": [1, 2], "c": 1}
    assert deep_merge(base, {"a": {"y": 3}, "b": [9], "d": 4}) == {
        "a": {"x": 1, "y": 3},
        "b": [9],
        "c": 1,
        "d": 4,
    }
    assert base["a"] == {"x": 1, "y": 2}  # inputs untouched


def test_a_relative_params_file_is_taken_from_the_project_root(tmp_path, monkeypatch) -> None:
    """JupyterLab starts a notebook's kernel in notebooks/: "params.yaml" must still work."""
    monkeypatch.chdir(tmp_path)
    config = load_stage_config("policy_pretrain", PretrainConfig, "params.yaml")
    assert config.block_size == 128


def test_notebook_sections_come_from_dvc_yaml(tmp_path: Path) -> None:
    sections = notebook_sections()
    assert sections["04_maxmin_ppo_gpt2"] == "maxmin_gpt2"
    assert sections["05_maxmin_ppo_tulu2"] == "maxmin_tulu2"
    bad = tmp_path / "dvc.yaml"
    run = "python -m pluralign.pipeline.runner notebooks/s.ipynb"
    bad.write_text(f"stages:\n  s:\n    cmd: {run}\n    params: [profile, a, b]\n")
    assert notebook_sections(bad) == {"s": "a"}  # its own section first, then shared ones
    bad.write_text("stages:\n  other:\n    cmd: python scripts/x.py\n")
    assert notebook_sections(bad) == {}  # only notebook stages read a section
    bad.write_text(f"stages:\n  s:\n    cmd: {run}\n    params: [profile]\n")
    with pytest.raises(ConfigError, match="stage s lists no params section"):
        notebook_sections(bad)


def test_profile_overrides_shared_keys() -> None:
    cpu = load_stage_config("policy_pretrain", PretrainConfig, None, "cpu")
    paper = load_stage_config("policy_pretrain", PretrainConfig, None, "paper")
    assert isinstance(cpu, PretrainConfig) and isinstance(paper, PretrainConfig)
    assert (cpu.init_from, paper.init_from) == ("scratch", "gpt2")
    assert cpu.block_size == 128 and paper.block_size == 256  # paper overrides a shared key
    assert cpu.temperature == paper.temperature  # shared


def test_default_profile_comes_from_the_file(tmp_path: Path) -> None:
    params = copy.deepcopy(TINY_PARAMS)
    params["profile"] = "paper"
    params["policy_pretrain"]["paper"] = dict(params["policy_pretrain"]["cpu"], init_from="gpt2")
    path = write_params(tmp_path / "p.yaml", params)
    assert load_stage_config("policy_pretrain", PretrainConfig, path).profile == "paper"


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
            r"policy_pretrain\.cpu\.lr: unknown",  # named with the profile it sits in
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
        load_stage_config("policy_pretrain", PretrainConfig, path)


def test_float_fields_accept_ints_and_yaml_exponent_strings(tmp_path: Path) -> None:
    path = _broken(tmp_path, lambda p: p["policy_pretrain"]["cpu"].update(learning_rate="1e-4"))
    assert load_stage_config(
        "policy_pretrain", PretrainConfig, path
    ).learning_rate == pytest.approx(1e-4)
    path = _broken(tmp_path, lambda p: p["policy_pretrain"].update(temperature=1))
    config = load_stage_config("policy_pretrain", PretrainConfig, path)
    assert config.temperature == 1.0 and isinstance(config.temperature, float)


def test_missing_or_invalid_params_file(tmp_path: Path) -> None:
    write_params(tmp_path / "p.yaml", copy.deepcopy(TINY_PARAMS))
    with pytest.raises(ConfigError, match="params file not found"):
        load_stage_config("policy_pretrain", PretrainConfig, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: [cpu\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_stage_config("policy_pretrain", PretrainConfig, bad)
    with pytest.raises(ConfigError, match="no_such_stage: section missing"):
        load_stage_config("no_such_stage", PretrainConfig, tmp_path / "p.yaml")


def test_a_profile_key_inside_a_section_and_nan_numbers_are_refused(tmp_path: Path) -> None:
    path = _broken(tmp_path, lambda p: p["policy_pretrain"].update(profile="paper"))
    with pytest.raises(ConfigError, match=r"policy_pretrain\.profile: the profile is chosen"):
        load_stage_config("policy_pretrain", PretrainConfig, path)
    path = _broken(tmp_path, lambda p: p["policy_pretrain"]["cpu"].update(learning_rate=".nan"))
    with pytest.raises(ConfigError, match=r"policy_pretrain\.learning_rate: expected a number"):
        load_stage_config("policy_pretrain", PretrainConfig, path)
