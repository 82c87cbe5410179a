"""scripts/pin_sources.py pins exactly the paper profile's hub sources, offline here with a
fake hub client, and edits params.yaml without touching anything else."""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from pluralign.pipeline.assets import resolve_source
from pluralign.pipeline.config import (
    PROFILES,
    load_stage_config,
    notebook_sections,
    profile_section,
    read_params,
)

_spec = importlib.util.spec_from_file_location("pin_sources", ROOT / "scripts" / "pin_sources.py")
assert _spec is not None and _spec.loader is not None
ps = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ps  # dataclasses look their module up there
_spec.loader.exec_module(ps)

MODELS = {
    "gpt2",
    "gpt2-medium",
    "lvwerra/distilbert-imdb",
    "sentence-transformers/all-MiniLM-L6-v2",
    "OpenAssistant/reward-model-deberta-v3-large-v2",
    "AnnaWegmann/Style-Embedding",
    "allenai/tulu-2-7b",
}
DATASETS = {"stanfordnlp/imdb", "cornell-movie-review-data/rotten_tomatoes", "Dahoas/rm-static"}
#: Every hub source of the committed params.yaml (key -> source), in file order.
EXPECTED = {
    "policy_pretrain.paper.init_from": "gpt2",
    "policy_pretrain.paper.tokenizer": "gpt2",
    "policy_pretrain.paper.imdb": "stanfordnlp/imdb",
    "sentiment_judge.paper.base_model": "lvwerra/distilbert-imdb",
    "sentiment_judge.paper.imdb": "stanfordnlp/imdb",
    "sentiment_judge.paper.rotten_tomatoes": "cornell-movie-review-data/rotten_tomatoes",
    "em_mixtures.paper.imdb": "stanfordnlp/imdb",
    "em_mixtures.paper.encoder": "sentence-transformers/all-MiniLM-L6-v2",
    "em_mixtures.paper.neural_backbone": "gpt2",
    "maxmin_gpt2.paper.judge": "lvwerra/distilbert-imdb",
    "maxmin_gpt2.paper.imdb": "stanfordnlp/imdb",
    "inverse_alignment.paper.policy": "gpt2-medium",
    "inverse_alignment.paper.judge": "OpenAssistant/reward-model-deberta-v3-large-v2",
    "inverse_alignment.paper.imdb": "stanfordnlp/imdb",
    "inverse_alignment.paper.offline_data": "Dahoas/rm-static",
    "inverse_alignment.paper.rm_backbone": "gpt2-medium",
    "inverse_alignment.paper.embeddings[0]": "AnnaWegmann/Style-Embedding",
    "maxmin_tulu2.paper.policy": "allenai/tulu-2-7b",
}
#: String-valued stage-config keys that never hold a hub source.
NON_SOURCE_KEYS = {
    "clone_theme", "truth", "reward_models", "rules", "labeler_mix", "preference_data",
    "psoups_files", "psoups_columns", "ppo_prompt_column", "ppo_input_column",
    "eval_prompts_split", "eval_prompt_column", "majority", "minority", "launcher", "judges",
    "judge_model",
}  # fmt: skip


class Info:
    def __init__(self, sha: str) -> None:
        self.sha = sha


class FakeHub:
    """Answers every name with a commit derived from ``salt``; records what was asked."""

    def __init__(self, salt: str = "a", errors: dict[str, Exception] | None = None) -> None:
        self.salt = salt
        self.errors = errors or {}
        self.models: list[str] = []
        self.datasets: list[str] = []

    def sha(self, repo_type: str, name: str) -> str:
        return hashlib.sha1(f"{self.salt}:{repo_type}:{name}".encode()).hexdigest()

    def _info(self, asked: list[str], repo_type: str, name: str) -> Info:
        asked.append(name)
        if name in self.errors:
            raise self.errors[name]
        return Info(self.sha(repo_type, name))

    def model_info(self, repo_id: str) -> Info:
        return self._info(self.models, "model", repo_id)

    def dataset_info(self, repo_id: str) -> Info:
        return self._info(self.datasets, "dataset", repo_id)


@pytest.fixture
def params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_bytes((ROOT / "params.yaml").read_bytes())
    return path


def _value(text: str, key: str) -> str:
    """The scalar at dotted key ``a.paper.b`` or ``a.paper.b[0]`` of a YAML text."""
    node = yaml.safe_load(text)
    for part in key.replace("[", ".").replace("]", "").split("."):
        node = node[int(part)] if part.isdigit() else node[part]
    return node


def _cpu_blocks(text: str) -> dict[str, str]:
    """Section -> the exact text of its ``cpu:`` block."""
    out = {}
    for key, section in yaml.compose(text, Loader=yaml.SafeLoader).value:
        if isinstance(section, yaml.MappingNode):
            for sub_key, value in section.value:
                if sub_key.value == "cpu":
                    out[key.value] = text[value.start_mark.index : value.end_mark.index]
    return out


def _comments(text: str) -> list[str]:
    return [line[line.index("#") :] for line in text.splitlines() if "#" in line]


def test_pins_every_paper_hub_source_and_nothing_else(params: Path) -> None:
    before = params.read_text(encoding="utf-8")
    hub = FakeHub()
    pins = ps.pin_sources(params, hub)
    after = params.read_text(encoding="utf-8")

    assert {p.key: p.source for p in pins} == EXPECTED
    assert [p.key for p in pins] == list(EXPECTED)  # file order
    assert all(p.status == "pinned" and p.previous is None for p in pins)
    for pin in pins:
        value = _value(after, pin.key).removeprefix(ps.SENTENCE)
        assert value == f"{pin.source}@{pin.commit}"
        assert pin.commit == hub.sha(pin.repo_type, pin.source)
        src = resolve_source(value, pin.key)  # the loaders' rule: no "unpinned" error
        assert (src.name, src.revision) == (pin.source, pin.commit)
    assert all(f.revision is not None for f in ps.find_sources(after))  # none left unpinned

    # Only the pinned scalars changed: same lines, each edited line gains "@<commit>" once.
    old_lines, new_lines = before.splitlines(), after.splitlines()
    assert len(old_lines) == len(new_lines)
    changed = [(o, n) for o, n in zip(old_lines, new_lines, strict=True) if o != n]
    assert len(changed) == len(EXPECTED)
    for (old, new), pin in zip(changed, pins, strict=True):
        assert new == old.replace(pin.source, f"{pin.source}@{pin.commit}", 1)
    assert _comments(after) == _comments(before)
    assert _cpu_blocks(after) == _cpu_blocks(before) and len(_cpu_blocks(before)) >= 6

    # Still a valid params file for both profiles, cpu values unchanged.
    loaded = read_params(params)
    original = yaml.safe_load(before)
    for section, body in loaded.items():
        if isinstance(body, dict):
            assert profile_section(body, "cpu", section) == profile_section(
                original[section], "cpu", section
            )
            profile_section(body, "paper", section)


def test_models_and_datasets_are_asked_by_kind_once_each(params: Path) -> None:
    hub = FakeHub()
    pins = ps.pin_sources(params, hub, dry_run=True)
    assert sorted(hub.models) == sorted(MODELS)  # each once: gpt2 is named 4 times
    assert sorted(hub.datasets) == sorted(DATASETS)
    kinds = {p.source: p.repo_type for p in pins}
    assert kinds["gpt2"] == kinds["AnnaWegmann/Style-Embedding"] == "model"
    assert kinds["stanfordnlp/imdb"] == kinds["Dahoas/rm-static"] == "dataset"


def test_pinned_sources_kept_without_update_repinned_with_it(params: Path) -> None:
    ps.pin_sources(params, FakeHub("old"))
    pinned = params.read_bytes()

    later = FakeHub("new")
    pins = ps.pin_sources(params, later)
    assert {p.status for p in pins} == {"kept"}
    assert later.models == later.datasets == []  # no need to ask: runs offline
    assert params.read_bytes() == pinned

    pins = ps.pin_sources(params, later, update=True)
    assert {p.status for p in pins} == {"updated"}
    old = FakeHub("old")
    assert all(p.previous == old.sha(p.repo_type, p.source) for p in pins)
    after = params.read_text(encoding="utf-8")
    for pin in pins:
        expected = f"{pin.source}@{later.sha(pin.repo_type, pin.source)}"
        assert _value(after, pin.key).removeprefix(ps.SENTENCE) == expected

    updated = params.read_bytes()
    assert {p.status for p in ps.pin_sources(params, later, update=True)} == {"current"}
    assert params.read_bytes() == updated


def test_unknown_repo_names_every_key_and_writes_nothing(params: Path) -> None:
    hf_errors = pytest.importorskip("huggingface_hub.errors")
    http = importlib.import_module(hf_errors.HTTPError.__module__)  # httpx (or its fork)
    RepositoryNotFoundError = hf_errors.RepositoryNotFoundError

    def not_found(name: str) -> RepositoryNotFoundError:
        request = http.Request("GET", f"https://huggingface.co/api/models/{name}")
        return RepositoryNotFoundError("404", response=http.Response(404, request=request))

    before = params.read_bytes()
    hub = FakeHub(errors={"allenai/tulu-2-7b": not_found("tulu"), "gpt2": not_found("gpt2")})
    with pytest.raises(ps.PinError) as err:
        ps.pin_sources(params, hub)
    message = str(err.value)
    assert "maxmin_tulu2.paper.policy: allenai/tulu-2-7b: the hub has no model" in message
    assert "policy_pretrain.paper.init_from, policy_pretrain.paper.tokenizer" in message
    assert "em_mixtures.paper.neural_backbone" in message and "cannot pin 2 source(s)" in message
    assert params.read_bytes() == before


@pytest.mark.parametrize(
    "error",
    [ConnectionError("Name or service not known"), "offline"],
    ids=["no-network", "offline-mode"],
)
def test_no_network_is_a_clear_error(params: Path, error: Exception | str) -> None:
    if error == "offline":
        error = pytest.importorskip("huggingface_hub.errors").OfflineModeIsEnabled("offline")
    before = params.read_bytes()
    hub = FakeHub(errors=dict.fromkeys(MODELS | DATASETS, error))
    with pytest.raises(ps.HubUnreachableError, match=r"policy_pretrain\.paper\.init_from.*gpt2"):
        ps.pin_sources(params, hub)
    assert len(hub.models) + len(hub.datasets) == 1  # stops at the first: nothing can work
    assert params.read_bytes() == before


def test_dry_run_writes_nothing(params: Path) -> None:
    before, mtime = params.read_bytes(), params.stat().st_mtime_ns
    pins = ps.pin_sources(params, FakeHub(), dry_run=True)
    assert len(pins) == len(EXPECTED) and all(p.changed for p in pins)
    assert params.read_bytes() == before and params.stat().st_mtime_ns == mtime
    assert [p.name for p in params.parent.iterdir()] == ["params.yaml"]  # no temp file left


def test_shared_keys_keywords_local_paths_and_line_endings(tmp_path: Path) -> None:
    text = (
        "profile: cpu\n"
        "stage:\n"
        "  encoder: org/shared-encoder   # a shared key naming the hub is pinned too\n"
        "  judge: 00_sentiment_judge\n"
        "  judges: [heldout_rm]\n"
        "  imdb: packaged\n"
        "  cpu:\n"
        "    policy: gpt2  # cpu blocks are never read\n"
        "  paper:\n"
        "    policy: llama_proxy\n"
        "    init_from: scratch\n"
        "    rm_backbone: 00_policy_pretrain\n"
        "    offline_data: synthetic\n"
        "    preference_data: data/rlphf\n"
        "    ppo_prompts: imdb\n"
        "    eval_prompts: data/x/koala.json\n"
        "    embeddings: [logprob_profile, 'sentence:packaged', 'sentence:org/style']\n"
        "    truth: org/not-a-source-key\n"
    ).replace("\n", "\r\n")
    path = tmp_path / "params.yaml"
    path.write_bytes(text.encode())
    hub = FakeHub()
    pins = ps.pin_sources(path, hub)
    assert [(p.key, p.source) for p in pins] == [
        ("stage.encoder", "org/shared-encoder"),
        ("stage.paper.embeddings[2]", "org/style"),
    ]
    style = hub.sha("model", "org/style")
    expected = text.replace("org/shared-encoder ", f"org/shared-encoder@{pins[0].commit} ")
    expected = expected.replace("'sentence:org/style'", f"'sentence:org/style@{style}'")
    assert path.read_bytes() == expected.encode()  # CRLF and quoting kept


def test_unusual_scalar_is_refused_not_mangled(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text('stage:\n  paper:\n    policy: "gpt\\x32"\n', encoding="utf-8")
    with pytest.raises(ps.PinError, match=r"stage\.paper\.policy: cannot edit"):
        ps.pin_sources(path, FakeHub())
    with pytest.raises(ps.PinError, match=r"stage\.paper\.judge: .*local path"):
        path.write_text("stage:\n  paper:\n    judge: ./models/x@abc\n", encoding="utf-8")
        ps.pin_sources(path, FakeHub())


def test_cli_prints_the_table(params: Path, monkeypatch, capsys) -> None:
    hub = FakeHub()
    monkeypatch.setattr("huggingface_hub.HfApi", lambda: hub)
    assert ps.main(["--params", str(params), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["key", "type", "source", "commit", "status"]
    assert "maxmin_tulu2.paper.policy" in out and hub.sha("model", "allenai/tulu-2-7b") in out
    assert f"would change {len(EXPECTED)} of {len(EXPECTED)}" in out

    hub.errors["Dahoas/rm-static"] = ValueError("boom")
    assert ps.main(["--params", str(params)]) == 1
    assert "inverse_alignment.paper.offline_data: Dahoas/rm-static" in capsys.readouterr().err


def _assigned(module: Path, name: str) -> object:
    for node in ast.parse(module.read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{module}: no {name}")


def test_keywords_and_keys_match_the_package() -> None:
    """The script restates constants of modules too slow to import here; they must agree,
    and every string key of a stage config must be classified as a source or not."""
    src = ROOT / "src" / "pluralign"
    assert set(_assigned(src / "training/models.py", "STAGE_MODELS")) == ps.STAGE_MODELS
    assert _assigned(src / "experiments/maxmin_tulu2.py", "PROXY") == ps.LLAMA_PROXY
    assert _assigned(src / "experiments/inverse_alignment.py", "SENTENCE") == ps.SENTENCE
    string_keys = set()
    for module in [*sorted((src / "experiments").glob("*.py")), src / "training/pretrain.py"]:
        for cls in ast.parse(module.read_text(encoding="utf-8")).body:
            if isinstance(cls, ast.ClassDef) and cls.name in ("Config", "PretrainConfig"):
                string_keys |= {
                    f.target.id
                    for f in cls.body
                    if isinstance(f, ast.AnnAssign) and "str" in ast.unparse(f.annotation)
                }
    assert set(ps.SOURCE_KEYS) | NON_SOURCE_KEYS == string_keys
    assert not set(ps.SOURCE_KEYS) & NON_SOURCE_KEYS


@pytest.mark.slow  # imports every stage module (torch, transformers): ~7 s
def test_pinned_file_loads_with_the_strict_loader(params: Path) -> None:
    ps.pin_sources(params, FakeHub())
    for section in notebook_sections().values():
        cls = importlib.import_module(f"pluralign.experiments.{section}").Config
        for profile in PROFILES:
            assert load_stage_config(section, cls, params, profile=profile).profile == profile
