"""Results are never lost, overwritten or misplaced (newcomer review, 2026-12).

Each test here failed on main at 34c2821:
* the checkout you stand in wins over the one pluralign is installed from;
* papermill with an unknown parameter fails instead of running the defaults into results/;
  per-key ``overrides`` are validated, and a run whose config differs from params.yaml
  writes to ``scratch/``;
* a typo'd param under ``dvc repro`` deletes nothing, and a notebook that fails mid-run
  leaves the previous outputs in place;
* metrics are written at a stated precision, manifests' ``dirty`` ignores the pipeline's
  own outputs, and the docs check tolerates an experiment's results in the workspace.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml
from helpers import GUARD, ROOT, TINY_PARAMS, write_params
from nbclient import NotebookClient

from pluralign.pipeline import paths as paths_module
from pluralign.pipeline.config import (
    ConfigError,
    load_stage_config,
    notebook_sections,
    parse_overrides,
)
from pluralign.pipeline.io import git_state, round_metrics, write_json_atomic
from pluralign.pipeline.outputs import choose_output_root, config_changes, promote
from pluralign.pipeline.paths import ProjectPaths, project_root
from pluralign.pipeline.stage import MAX_HEADLINE, Stage, check_parameters

STAGE = "01_clone_theory"
VENV_BIN = Path(sys.executable).parent


def _checkout(folder: Path, params: dict | None = None) -> Path:
    """A second clone of the project, as far as a notebook run can tell: dvc.yaml, params,
    notebooks and a ``src/pluralign`` folder (its code is imported from the shared env)."""
    (folder / "notebooks").mkdir(parents=True)
    (folder / "src" / "pluralign").mkdir(parents=True)
    shutil.copy(ROOT / "dvc.yaml", folder / "dvc.yaml")
    shutil.copy(ROOT / "notebooks" / f"{STAGE}.ipynb", folder / "notebooks")
    write_params(folder / "params.yaml", params or TINY_PARAMS)
    return folder


@pytest.fixture
def kernel_env(tmp_path: Path, monkeypatch) -> Path:
    """Kernels inherit the network guard and a headless backend; no PLURALIGN_ROOT."""
    monkeypatch.delenv("PLURALIGN_ROOT", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(GUARD))
    monkeypatch.setenv("NETGUARD_LOG", str(tmp_path / "netguard.log"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return tmp_path


def _committed_results_untouched(before: dict[Path, float]) -> None:
    assert {p: p.stat().st_mtime for p in before} == before
    assert not (ROOT / "scratch").exists()


@pytest.fixture
def repo_results() -> dict[Path, float]:
    """The repository's own results of stage 01, to check that no test run wrote them."""
    files = [ROOT / "results" / d / f"{STAGE}.json" for d in ("metrics", "details", "manifests")]
    return {p: p.stat().st_mtime for p in files}


# --------------------------------------------------------------------------- 1. which checkout


def test_the_working_directory_checkout_wins_over_the_install_location(
    tmp_path: Path, monkeypatch
) -> None:
    other = _checkout(tmp_path / "clone_b")
    monkeypatch.delenv("PLURALIGN_ROOT", raising=False)
    monkeypatch.chdir(other / "notebooks")
    monkeypatch.setattr(paths_module, "_WARNED", set())
    with pytest.warns(UserWarning, match="imported from another checkout"):
        assert project_root() == other.resolve()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per process, not at every lookup
        assert project_root() == other.resolve()
    monkeypatch.chdir(ROOT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same checkout: silent
        assert project_root() == ROOT
    monkeypatch.setenv("PLURALIGN_ROOT", str(other))  # the variable still overrides
    monkeypatch.chdir(tmp_path)
    assert project_root() == other.resolve()


def test_outside_any_checkout_the_install_location_is_used(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("PLURALIGN_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert project_root() == Path(paths_module.__file__).resolve().parents[3]


def test_two_clones_one_env_each_run_writes_into_its_own_clone(
    kernel_env: Path, repo_results: dict[Path, float]
) -> None:
    """JupyterLab in clone B (kernel in B/notebooks) and the runner in clone C, with the
    package installed from this repository: each writes its own results/."""
    clone_b = _checkout(kernel_env / "clone_b")
    nb = nbformat.read(clone_b / "notebooks" / f"{STAGE}.ipynb", as_version=4)
    NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(clone_b / "notebooks")}},
    ).execute()
    assert json.loads((clone_b / "results" / "details" / f"{STAGE}.json").read_text())

    clone_c = _checkout(kernel_env / "clone_c")
    proc = subprocess.run(
        [sys.executable, "-m", "pluralign.pipeline.runner", f"notebooks/{STAGE}.ipynb"],
        cwd=clone_c,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (clone_c / "results" / "metrics" / f"{STAGE}.json").is_file()
    executed = nbformat.read(clone_c / "results" / "notebooks" / f"{STAGE}.ipynb", as_version=4)
    injected = next(
        c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])
    )
    assert f'output_root = "{clone_c.resolve()}"' in injected.source  # not the staging folder
    assert not (clone_c / ".staging" / STAGE).exists()
    _committed_results_untouched(repo_results)

    # a rerun of the unchanged tree writes the same metrics, details and figures
    before = _result_bytes(clone_c)
    rerun = subprocess.run(proc.args, cwd=clone_c, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _result_bytes(clone_c) == before


def _result_bytes(root: Path) -> dict[str, bytes]:
    files = [root / "results" / d / f"{STAGE}.json" for d in ("metrics", "details")]
    files += sorted((root / "results" / "figures").glob("*.png"))
    return {p.name: p.read_bytes() for p in files}


# --------------------------------------------------------------------------- 2. parameters


def test_an_unknown_papermill_parameter_is_an_error(kernel_env: Path) -> None:
    clone = _checkout(kernel_env / "clone")
    with pytest.raises(papermill.PapermillExecutionError, match="unknown notebook parameter"):
        papermill.execute_notebook(
            str(clone / "notebooks" / f"{STAGE}.ipynb"),
            str(kernel_env / "out.ipynb"),
            parameters={"clone_k": 8},
            cwd=str(clone),
            progress_bar=False,
        )
    assert not (clone / "results").exists()  # nothing ran with the defaults


def test_overrides_are_validated_and_a_changed_config_writes_to_scratch(
    kernel_env: Path,
) -> None:
    clone = _checkout(kernel_env / "clone")
    notebook = str(clone / "notebooks" / f"{STAGE}.ipynb")
    with pytest.raises(papermill.PapermillExecutionError, match=r"overrides\[clone_theory\]"):
        papermill.execute_notebook(
            notebook, str(kernel_env / "bad.ipynb"), parameters={"overrides": {"clone_kk": 3}},
            cwd=str(clone), progress_bar=False,
        )  # fmt: skip
    papermill.execute_notebook(
        notebook, str(kernel_env / "ok.ipynb"), parameters={"overrides": "{clone_k: 3}"},
        cwd=str(clone), progress_bar=False,
    )  # fmt: skip
    assert not (clone / "results").exists()  # the committed results are not this config's
    (scratch,) = (clone / "scratch").iterdir()
    assert scratch.name.startswith(f"{STAGE}-")
    manifest = json.loads((scratch / "results" / "manifests" / f"{STAGE}.json").read_text())
    assert manifest["config"]["clone_k"] == 3 and manifest["overrides"] == {"clone_k": 3}


def test_parse_overrides_takes_dotted_nested_and_yaml_forms() -> None:
    want = {"ppo": {"kl_coef": 0.1, "n_updates": 3}, "seed": 2}
    assert parse_overrides({"ppo.kl_coef": 0.1, "ppo": {"n_updates": 3}, "seed": 2}) == want
    assert parse_overrides("{ppo.kl_coef: 0.1, ppo.n_updates: 3, seed: 2}") == want
    assert parse_overrides(None) == {} == parse_overrides("")
    for bad, message in (
        ("[1, 2]", "expected a mapping"),
        ({"a..b": 1}, "is not a key"),
        ({"cpu.seed": 1}, "choose the profile"),
        ("{a: [", "not valid YAML"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_overrides(bad)


def test_overrides_go_through_the_strict_loader() -> None:
    from pluralign.experiments import maxmin_gpt2

    cfg = load_stage_config("maxmin_gpt2", maxmin_gpt2.Config, None, "cpu", {"ppo.kl_coef": 0.2})
    assert cfg.ppo.kl_coef == 0.2
    with pytest.raises(ConfigError, match=r"overrides\[maxmin_gpt2\]\.ppo\.kl_coff: unknown"):
        load_stage_config("maxmin_gpt2", maxmin_gpt2.Config, None, "cpu", {"ppo.kl_coff": 0.2})
    with pytest.raises(ConfigError, match=r"maxmin_gpt2\.ppo\.kl_coef: expected a number"):
        load_stage_config("maxmin_gpt2", maxmin_gpt2.Config, None, "cpu", {"ppo.kl_coef": "x"})


def test_output_root_is_results_only_for_the_params_yaml_config(tmp_path: Path) -> None:
    assert config_changes(STAGE) == []
    assert choose_output_root(STAGE, None, None, None, None) == ROOT
    changes = config_changes(STAGE, None, None, {"clone_k": 8})
    assert changes == ["clone_theory.clone_k: 4 -> 8"]
    scratch = choose_output_root(STAGE, None, None, {"clone_k": 8}, None)
    assert scratch.parent == ROOT / "scratch" and scratch.name.startswith(STAGE)
    assert choose_output_root(STAGE, None, "paper", None, None).parent == ROOT / "scratch"
    assert choose_output_root(STAGE, None, None, {"clone_k": 8}, tmp_path) == tmp_path
    # the same values written in another file are the same config
    same = write_params(tmp_path / "p.yaml", yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert config_changes(STAGE, same) == []


def test_only_the_notebook_parameters_may_be_injected() -> None:
    check_parameters(STAGE, "clone_theory", ["params_file", "profile", "overrides"])
    with pytest.raises(ConfigError, match=r"\['clone_k'\].*-p overrides '\{clone_k: \.\.\.\}'"):
        check_parameters(STAGE, "clone_theory", ["profile", "clone_k"])


# --------------------------------------------------------------------------- 3. nothing deleted


def _project_copy(dest: Path) -> Path:
    """Every file git would commit (tracked or new), in a fresh git repository."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "copy"]):
        subprocess.run(["git", *args], cwd=dest, check=True, capture_output=True)
    return dest


def test_a_typo_under_dvc_repro_leaves_git_status_clean(tmp_path: Path) -> None:
    repo = _project_copy(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["clone_theory"]["clone_kk"] = params["clone_theory"].pop("clone_k")
    write_params(repo / "params.yaml", params)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PLURALIGN_ROOT", None)
    proc = subprocess.run(
        [str(VENV_BIN / "dvc"), "repro", STAGE], cwd=repo, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "clone_theory.clone_kk: unknown key" in proc.stdout + proc.stderr
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True
    ).stdout.splitlines()
    assert status == [" M params.yaml"], status  # no committed output deleted


FAILING = """\
import os
from pathlib import Path
out = Path(os.environ.get("PLURALIGN_STAGE_INTO", output_root)) / "results/metrics/99_demo.json"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text('{"run": "new"}')
if fail:
    raise RuntimeError("killed after writing one output")
"""


def _demo_project(root: Path) -> Path:
    """A project with one notebook that writes an output, then fails if told to."""
    (root / "notebooks").mkdir(parents=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    write_params(root / "params.yaml", {"profile": "cpu"})
    nb = nbformat.v4.new_notebook()
    params = "params_file = None\nprofile = None\noverrides = {}\noutput_root = None\nfail = True"
    nb.cells = [nbformat.v4.new_code_cell(params), nbformat.v4.new_code_cell(FAILING)]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "py"}
    nbformat.write(nb, root / "notebooks" / "99_demo.ipynb")
    return root


def test_a_run_that_fails_midway_leaves_the_previous_outputs(kernel_env: Path) -> None:
    root = _demo_project(kernel_env / "demo")
    old = root / "results" / "metrics" / "99_demo.json"
    old.parent.mkdir(parents=True)
    old.write_text('{"run": "old"}')
    runner = [sys.executable, "-m", "pluralign.pipeline.runner", "notebooks/99_demo.ipynb"]
    env = {**os.environ, "PLURALIGN_ROOT": str(root)}
    proc = subprocess.run(runner, cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "previous outputs" in proc.stderr
    assert old.read_text() == '{"run": "old"}'
    assert not (root / "results" / "notebooks" / "99_demo.ipynb").exists()
    # the failed run's files are kept for inspection, apart from the results
    assert (root / ".staging" / "99_demo" / "results" / "metrics" / "99_demo.json").is_file()


def test_promote_needs_every_declared_output_and_replaces_folders_whole(tmp_path: Path) -> None:
    staging, dest = tmp_path / "staging", tmp_path / "dest"
    (staging / "models" / "m").mkdir(parents=True)
    (staging / "models" / "m" / "new.bin").write_text("new")
    (dest / "models" / "m").mkdir(parents=True)
    (dest / "models" / "m" / "old.bin").write_text("old")
    with pytest.raises(ConfigError, match=r"without writing results/metrics/x\.json"):
        promote(staging, dest, ["models/m", "results/metrics/x.json"])
    assert (dest / "models" / "m" / "old.bin").is_file()  # nothing moved
    write_json_atomic(staging / "results" / "metrics" / "x.json", {"a": 1})
    promote(staging, dest, ["models/m", "results/metrics/x.json"])
    assert sorted(p.name for p in (dest / "models" / "m").iterdir()) == ["new.bin"]
    assert json.loads((dest / "results" / "metrics" / "x.json").read_text()) == {"a": 1}
    assert not staging.exists()


def test_an_output_the_run_says_it_does_not_write_loses_its_stale_copy(tmp_path: Path) -> None:
    """Notebook 05 on the paper profile trains no Llama proxy: the cpu run's proxy must not
    pass for the paper run's."""
    staging, dest = tmp_path / "staging", tmp_path / "dest"
    write_json_atomic(staging / "results" / "metrics" / "x.json", {"a": 2})
    (dest / "models" / "proxy").mkdir(parents=True)
    (dest / "models" / "proxy" / "w.bin").write_text("cpu run")
    declared = ["models/proxy", "results/metrics/x.json"]
    promote(staging, dest, declared, {"models/proxy": "paper profile: no proxy"})
    assert not (dest / "models" / "proxy").exists()
    assert json.loads((dest / "results" / "metrics" / "x.json").read_text()) == {"a": 2}
    (staging / "results").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"not_written names \['models'\]"):
        promote(staging, dest, declared, {"models": "a typo must not delete a tree"})
    assert (dest / "results" / "metrics" / "x.json").is_file()


def test_swap_dir_replaces_a_linked_folder_twice(tmp_path: Path) -> None:
    """DVC may link a cached model folder into the workspace; a second swap must not trip
    over the link the first one set aside."""
    from pluralign.pipeline.io import swap_dir

    (tmp_path / "cache").mkdir()
    (tmp_path / "model").symlink_to(tmp_path / "cache", target_is_directory=True)
    for version in ("v1", "v2"):
        new = tmp_path / f"new_{version}"
        new.mkdir()
        (new / "w").write_text(version)
        swap_dir(new, tmp_path / "model")
        assert (tmp_path / "model" / "w").read_text() == version
    assert (tmp_path / "cache").is_dir()  # what the link pointed to is left alone


# --------------------------------------------------------------------------- 4. clean reruns


def test_metrics_are_written_at_a_stated_precision(tmp_path: Path) -> None:
    """Two runs whose numbers differ in the last bits (another BLAS thread count) write
    the same bytes; -0.0 and numerical zeros are written as 0."""
    x = 0.1 + 0.2
    assert x != 0.3 and round_metrics(x) == round_metrics(0.3) == 0.3
    assert round_metrics({"a": [-1e-17, -0.0], "b": 7, "c": True, "d": "P1"}) == {
        "a": [0.0, 0.0], "b": 7, "c": True, "d": "P1",
    }  # fmt: skip
    assert str(round_metrics(-0.0)) == "0.0"
    assert round_metrics(123456789.123) == 123457000.0 and round_metrics(2.5e-7) == 2.5e-7

    from pluralign.experiments import clone_theory

    written = []
    for eps in (0.0, 1e-15):
        paths = ProjectPaths(tmp_path / f"run{eps}")
        stage = Stage(STAGE, load_stage_config("clone_theory", clone_theory.Config), paths, {})
        metrics = {"claim1_mle_max_change": 0.2825541863843605 * (1 + eps), "n": 3}
        stage.finish(metrics, headline=("claim1_mle_max_change",))
        written.append([(paths.root / "results" / d / f"{STAGE}.json").read_bytes()
                        for d in ("metrics", "details")])  # fmt: skip
    assert written[0] == written[1]
    assert json.loads(written[0][0]) == {"claim1_mle_max_change": 0.282554}
    with pytest.raises(ValueError, match="at most"):
        stage.finish(metrics, headline=tuple(f"k{i}" for i in range(MAX_HEADLINE + 1)))


def _git_repo(folder: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "c"]):
        subprocess.run(["git", *args], cwd=folder, check=True, capture_output=True)
    return folder


def test_dirty_means_the_code_differs_not_the_outputs(tmp_path: Path) -> None:
    repo = _git_repo(
        tmp_path,
        {"src/a.py": "x = 1\n", "results/metrics/s.json": "{}\n", "dvc.lock": "a\n"},
    )
    (repo / "results" / "metrics" / "s.json").write_text('{"a": 1}\n')  # a stage's output
    (repo / "dvc.lock").write_text("b\n")
    assert git_state(repo)["dirty"] is False
    (repo / "src" / "a.py").write_text("x = 2\n")
    state = git_state(repo)
    assert state["dirty"] is True and state["changed"] == ["src/a.py"]
    subprocess.run(["git", "checkout", "-q", "src/a.py"], cwd=repo, check=True)
    subprocess.run(["git", "mv", "src/a.py", "results/a.py"], cwd=repo, check=True)
    state = git_state(repo)  # code moved out of src/ into an output folder: still dirty
    assert state["dirty"] is True and "src/a.py" in state["changed"]


def test_docs_check_tolerates_an_experiment_in_the_workspace(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "update_docs", ROOT / "scripts" / "update_docs.py"
    )
    update_docs = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = update_docs
    spec.loader.exec_module(update_docs)
    readme = (
        "x <!-- m:01_s:k:.2f -->0.50<!-- /m -->\n<!-- headline:begin -->\n<!-- headline:end -->\n"
    )
    repo = _git_repo(tmp_path, {"README.md": readme, "results/details/01_s.json": '{"k": 0.5}'})
    details = repo / "results" / "details"
    table, _ = update_docs.headline_table({}, ())
    (repo / "README.md").write_text(update_docs.render_block(readme, "headline", table, "R"))
    subprocess.run(["git", "commit", "-qam", "table"], cwd=repo, check=True)
    assert update_docs.run(repo, details, check=True, headline=()) == 0
    (details / "01_s.json").write_text('{"k": 0.7}')  # dvc exp run rewrote the results
    assert update_docs.run(repo, details, check=True, headline=()) == 0
    subprocess.run(["git", "commit", "-qam", "new results"], cwd=repo, check=True)
    assert update_docs.run(repo, details, check=True, headline=()) == 1  # committed: stale


# --------------------------------------------------------------------------- DVC's views


#: Headline keys added after a stage's committed run (04-06 are stale until they are rerun).
NOT_IN_COMMITTED_RUN = {
    "04_maxmin_ppo_gpt2": {"em_text_converged"},
    "05_maxmin_ppo_tulu2": {"em_converged_10to1"},
}


@pytest.mark.parametrize("stage", sorted(notebook_sections(ROOT / "dvc.yaml")))
def test_dvc_metrics_are_the_stage_headline(stage: str) -> None:
    """``dvc exp show`` / ``dvc metrics diff`` list each stage's few headline numbers; the
    README's headline table shows only DVC metrics."""
    section = notebook_sections(ROOT / "dvc.yaml")[stage]
    headline = importlib.import_module(f"pluralign.experiments.{section}").HEADLINE
    assert len(headline) <= MAX_HEADLINE
    metrics = json.loads((ROOT / "results" / "metrics" / f"{stage}.json").read_text())
    details = json.loads((ROOT / "results" / "details" / f"{stage}.json").read_text())
    assert set(metrics) == set(headline) - NOT_IN_COMMITTED_RUN.get(stage, set())
    assert all(details[k] == v for k, v in metrics.items())
    spec = importlib.util.spec_from_file_location(
        "update_docs", ROOT / "scripts" / "update_docs.py"
    )
    update_docs = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = update_docs
    spec.loader.exec_module(update_docs)
    readme_keys = {row.key for row in update_docs.HEADLINE if row.stage == stage}
    assert readme_keys <= set(headline)
