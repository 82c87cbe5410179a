"""The paper profile of notebooks 04-06, resolved and checked before any GPU sees it: the
defects of ``shared/reviews/paper-path-2026-12.md`` that a CPU can show (1, 4, 5, 8, 9,
10), and the profile against the authors' values recorded in
``configs/authors_protocol.yaml``. What needs CUDA (bf16 under autocast, 8-bit bases, peak
memory) is covered by ``scripts/gpu_smoke.py`` instead."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from datasets import Dataset
from helpers import ROOT, tiny_gpt2

from pluralign.experiments import inverse_alignment, maxmin_gpt2, maxmin_tulu2
from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.pipeline.config import load_stage_config
from pluralign.training.judges import JudgeError
from pluralign.training.ppo import PPOSettings, check_batch, value_model_from
from pluralign.training.reward_adapter import TextRewardAdapter
from pluralign.training.reward_models import tokenize_pairs

STAGES = {
    "maxmin_gpt2": maxmin_gpt2.Config,
    "maxmin_tulu2": maxmin_tulu2.Config,
    "inverse_alignment": inverse_alignment.Config,
}
PROTOCOL = yaml.safe_load((ROOT / "configs" / "authors_protocol.yaml").read_text())
MISSING = object()


def paper(section: str, **overrides: Any):
    return load_stage_config(section, STAGES[section], ROOT / "params.yaml", "paper", overrides)


def _get(config: Any, dotted: str) -> Any:
    value = config
    for part in dotted.split("."):
        value = getattr(value, part, MISSING)
        if value is MISSING:
            return MISSING
    return value


@pytest.mark.parametrize(
    "section,entry",
    [(s, e) for s, entries in PROTOCOL.items() for e in entries],
    ids=lambda x: x if isinstance(x, str) else x["key"],
)
def test_paper_profile_follows_the_authors_or_labels_the_departure(section, entry) -> None:
    value = _get(paper(section), entry["key"])
    if "departure" not in entry:
        assert value is not MISSING, f"{section}.{entry['key']}: no such setting"
        assert (
            value == pytest.approx(entry["authors"])
            if isinstance(value, float)
            else (value == entry["authors"])
        ), f"{section}.{entry['key']} = {value!r}, the authors' is {entry['authors']!r}"
        return
    doc = (ROOT / entry["doc"]).read_text(encoding="utf-8")
    assert entry["label"] in doc, f"{entry['doc']} does not label: {entry['label']!r}"
    if value is not MISSING:  # a labelled departure must really depart
        assert value != entry["authors"], f"{section}.{entry['key']} is the authors' value"


@pytest.mark.parametrize("section", list(STAGES))
def test_every_paper_ppo_batch_passes_trls_arithmetic(section) -> None:
    """Defect 1: 05's mini-batch of 8 / 2 = 4 failed TRL's whitening assertion."""
    cfg = paper(section)
    processes = maxmin_tulu2.launcher_processes(getattr(cfg, "launcher", None))
    assert check_batch(cfg.ppo, processes) == cfg.ppo.batch_size // processes


def _trl_trainer(settings: PPOSettings, tmp_path: Path):
    """TRL's own trainer built with ``settings``' batch shape (its assertions run here)."""
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tok = load_gpt2_tokenizer(max_merges=300)
    policy = tiny_gpt2(tok, seed=0)
    prompts = Dataset.from_dict({"input_ids": [[tok.eos_token_id, 40, 41]] * 16})
    reward = TextRewardAdapter(tok, 3, {"g": lambda t: [0.0] * len(t)}, {"g": None}, "single")
    return PPOTrainer(
        args=PPOConfig(
            output_dir=str(tmp_path), per_device_train_batch_size=settings.batch_size,
            num_mini_batches=settings.num_mini_batches, whiten_rewards=settings.whiten_rewards,
            total_episodes=settings.batch_size, num_sample_generations=0, report_to=[],
            bf16=False, use_cpu=True, response_length=4,
        ),
        processing_class=tok, model=policy, ref_model=tiny_gpt2(tok, seed=0),
        reward_model=reward, train_dataset=prompts, value_model=value_model_from(policy),
    )  # fmt: skip


def test_check_batch_agrees_with_trls_trainer(tmp_path: Path) -> None:
    """The rule :func:`check_batch` applies at config time is TRL's, which fires only once
    every model is loaded: the old 05 paper shape fails both, the new one passes both."""
    old = PPOSettings.__new__(PPOSettings)  # bypass validation: the shape the review found
    object.__setattr__(old, "__dict__", {})
    for name, value in dict(n_updates=1, batch_size=8, num_mini_batches=2, num_ppo_epochs=1,
                            learning_rate=1e-5, kl_coef=0.05, checkpoint_every=1,
                            whiten_rewards=True).items():  # fmt: skip
        object.__setattr__(old, name, value)
    with pytest.raises(ValueError, match="whiten_rewards needs per-rank mini-batches of >= 8"):
        check_batch(old, 1)
    with pytest.raises(AssertionError, match="insufficient for whitening"):
        _trl_trainer(old, tmp_path / "old")
    new = PPOSettings(1, 8, num_mini_batches=1, num_ppo_epochs=1, whiten_rewards=True)
    assert check_batch(new, 1) == 8
    _trl_trainer(new, tmp_path / "new")
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        check_batch(new, 3)
    with pytest.raises(ValueError, match="gives 1"):
        check_batch(new, 8)  # eight GPUs at batch 8: one prompt per rank cannot be whitened


def test_a_multi_gpu_launcher_is_checked_when_the_config_loads() -> None:
    """Defect 10: a batch split over the launcher's processes is checked at load, and
    ZeRO-3 (defect 4) is refused with the reason, before any model loads."""
    with pytest.raises(ValueError, match="gives 1"):
        paper("maxmin_tulu2", launcher="configs/accelerate/multi_gpu.yaml")
    cfg = paper(
        "maxmin_tulu2", launcher="configs/accelerate/multi_gpu.yaml", ppo={"batch_size": 64}
    )
    assert check_batch(cfg.ppo, 8) == 8
    with pytest.raises(ValueError, match="ZeRO-3 is not supported"):
        paper("maxmin_tulu2", launcher="configs/accelerate/deepspeed_zero3.yaml")
    with pytest.raises(ValueError, match="no accelerate config file"):
        paper("maxmin_tulu2", launcher="configs/accelerate/missing.yaml")


def test_every_documented_launch_names_a_module_that_exists() -> None:
    """Defect 10: ``single_gpu.yaml`` told users to run ``-m pluralign.maxmin_tulu2``."""
    import importlib.util

    texts = [p.read_text() for p in (ROOT / "configs").rglob("*.yaml")]
    texts += [p.read_text() for p in (ROOT / "docs").glob("*.md")] + [
        (ROOT / "README.md").read_text()
    ]
    modules = {m for t in texts for m in re.findall(r"-m\s+(pluralign[\w.]*)", t)}
    assert modules, "no documented launch found"
    for module in modules:
        assert importlib.util.find_spec(module) is not None, module


def test_04_paper_policy_is_the_sft_model() -> None:
    """Defect 8: the paper profile ran PPO from raw ``gpt2``."""
    from pluralign.training.models import STAGE_MODELS

    assert paper("maxmin_gpt2").policy in STAGE_MODELS


def test_06_paper_reward_models_see_the_responses() -> None:
    """Defect 5: at 48 tokens an rm-static pair is cut inside the shared prompt, so chosen
    and rejected read the same; the paper profile's length keeps where they differ."""
    cfg = paper("inverse_alignment")
    tok = load_gpt2_tokenizer(max_merges=300)
    prompt = "\n\nHuman: " + "Could you tell me how bread rises in a warm kitchen? " * 4
    chosen = prompt + "\n\nAssistant: Yeast eats sugar and makes gas."
    rejected = prompt + "\n\nAssistant: I do not know."

    def differ(length: int) -> bool:
        pairs = tokenize_pairs(tok, [chosen], [rejected], length)
        return pairs["chosen_ids"][0] != pairs["rejected_ids"][0]

    assert not differ(48)  # the cpu default, which the paper profile used to inherit
    assert differ(cfg.reward_model.max_length)
    assert cfg.reward_model.max_length + cfg.prompt_tokens <= 1024  # gpt2-medium positions


def test_preflight_fails_before_any_model(tmp_path: Path, monkeypatch) -> None:
    """Defect 9: the endpoint judge's environment and the P-SOUPS files were first read
    after all of PPO."""
    monkeypatch.delenv("PLURALIGN_JUDGE_URL", raising=False)
    cfg = paper("maxmin_tulu2", judges=["heldout_rm", "endpoint"], judge_model="gpt-4")
    with pytest.raises(JudgeError, match="PLURALIGN_JUDGE_URL"):
        maxmin_tulu2.preflight(cfg)
    monkeypatch.chdir(tmp_path)  # no data/ here
    with pytest.raises(FileNotFoundError, match=r"rm_training/P1A.json \(psoups_files.P1A\)"):
        maxmin_tulu2.preflight(paper("maxmin_tulu2"))
    rlphf = ["rm_training/P1A.json", "rm_training/P1B.json", "alpaca_gpt4_10k.json"]
    for rel in [f"data/rlphf/{r}" for r in rlphf] + ["data/maxminrlhf/koala_eval_50.json"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}\n")
    maxmin_tulu2.preflight(paper("maxmin_tulu2"))
    assert torch.is_tensor(torch.zeros(1))  # nothing above loaded a model
