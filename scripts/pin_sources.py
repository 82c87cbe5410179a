"""Pin every hub source of ``params.yaml`` to the hub's current commit: ``name@<commit>``.

The loaders refuse an unpinned hub name (:func:`pluralign.pipeline.assets.resolve_source`),
so a re-upload on the hub cannot change a result silently; the paper profile therefore runs
only after this script has been run once, with network access, and its edit committed.

Which values are hub sources is decided per key (:data:`SOURCE_KEYS`: a model or a dataset
key, and the key's own non-hub words such as ``packaged`` or ``00_policy_pretrain``), then by
the repo's one hub-vs-local rule, ``resolve_source`` itself, so ``data/rlphf/x.json`` stays a
local file. Only the ``paper:`` blocks and the shared keys of each section are read;
``cpu:`` blocks are never touched.

The file is edited as text (each scalar replaced where the YAML parser found it), so
comments and layout survive; the result is re-parsed and must differ from the original
only by the pins before it replaces the file (atomically).

    python scripts/pin_sources.py             # pin unpinned sources, rewrite params.yaml
    python scripts/pin_sources.py --dry-run   # print the table only
    python scripts/pin_sources.py --update    # also move pinned sources to the current commit
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml

from pluralign.pipeline.assets import PACKAGED, PACKAGED_MINILM, AssetError, resolve_source
from pluralign.pipeline.config import DEFAULT_PARAMS_FILE, PROFILES
from pluralign.pipeline.paths import from_root

RepoType = Literal["model", "dataset"]
MODEL: RepoType = "model"
DATASET: RepoType = "dataset"
#: The profile whose sources are pinned (with the shared keys every profile reads).
PAPER = "paper"

# Non-hub words of the source keys. They live in modules that import torch and transformers
# (seconds), so they are restated here; tests/scripts/test_pin_sources.py checks them against
# the source text of those modules.
#: ``pluralign.training.models.STAGE_MODELS``: upstream stages whose model folder is meant.
STAGE_MODELS = frozenset({"00_policy_pretrain", "00_sentiment_judge"})
#: ``pluralign.experiments.maxmin_tulu2.PROXY``: the Llama proxy trained in that stage.
LLAMA_PROXY = "llama_proxy"
#: ``pluralign.experiments.inverse_alignment.SENTENCE``: embedding ``sentence:<encoder>``.
SENTENCE = "sentence:"
#: ``init_from: scratch`` (``pluralign.training.pretrain``): a fresh GPT-2-shaped model.
SCRATCH = "scratch"
#: ``offline_data`` / ``preference_data: synthetic``: data built in the stage.
SYNTHETIC = "synthetic"
#: ``ppo_prompts`` / ``eval_prompts: imdb`` (``maxmin_tulu2``): review openings as prompts.
IMDB_PROMPTS = "imdb"

_HEX40 = re.compile(r"[0-9a-f]{40}")
#: Characters a pinned value may hold, so it is written without quoting or escaping.
_SAFE_VALUE = re.compile(r"[A-Za-z0-9._/:@-]+")


@dataclass(frozen=True)
class SourceKey:
    """How a params key names its source: the hub repo type, and the values that are not
    hub names. A list-valued key holds sources only in items starting with ``prefix``."""

    repo_type: RepoType
    keywords: frozenset[str]
    prefix: str = ""


#: Every stage-config key that may hold a hub source (the ``Config`` docstrings in
#: ``pluralign.experiments`` and ``PretrainConfig``). A key not listed is never edited, e.g.
#: ``preference_data`` (``synthetic`` or a local P-SOUPS folder, never a hub set).
SOURCE_KEYS: dict[str, SourceKey] = {
    "policy": SourceKey(MODEL, STAGE_MODELS | {LLAMA_PROXY}),
    "judge": SourceKey(MODEL, STAGE_MODELS),
    "rm_backbone": SourceKey(MODEL, STAGE_MODELS),
    "init_from": SourceKey(MODEL, frozenset({SCRATCH})),
    "tokenizer": SourceKey(MODEL, frozenset({PACKAGED})),
    "base_model": SourceKey(MODEL, frozenset({PACKAGED_MINILM})),
    "neural_backbone": SourceKey(MODEL, frozenset({PACKAGED_MINILM})),
    "encoder": SourceKey(MODEL, frozenset({PACKAGED})),
    "probe_encoder": SourceKey(MODEL, frozenset({PACKAGED})),
    "embeddings": SourceKey(MODEL, frozenset({PACKAGED}), prefix=SENTENCE),
    "imdb": SourceKey(DATASET, frozenset({PACKAGED})),
    "rotten_tomatoes": SourceKey(DATASET, frozenset({PACKAGED})),
    "offline_data": SourceKey(DATASET, frozenset({SYNTHETIC})),
    "ppo_prompts": SourceKey(DATASET, frozenset({IMDB_PROMPTS})),
    "eval_prompts": SourceKey(DATASET, frozenset({IMDB_PROMPTS})),
}


class PinError(RuntimeError):
    """A source that cannot be pinned, or an edit that cannot be made safely; the message
    names the params key and the source. Nothing is written when it is raised."""


class HubUnreachableError(PinError):
    """The hub cannot be asked at all (no network, offline mode): no source can be pinned."""


class RepoInfo(Protocol):
    sha: str | None


class HubClient(Protocol):
    """What is used of ``huggingface_hub.HfApi``; tests pass a fake."""

    def model_info(self, repo_id: str) -> RepoInfo: ...

    def dataset_info(self, repo_id: str) -> RepoInfo: ...


@dataclass(frozen=True)
class Pin:
    """One hub source of the params file and what this run did with it.

    ``status``: ``pinned`` (was unpinned), ``kept`` (already pinned, not asked: no
    ``--update``), ``updated`` (re-pinned to a newer commit) or ``current`` (``--update``
    found the pinned commit is still the hub's)."""

    key: str
    repo_type: RepoType
    source: str
    commit: str
    previous: str | None
    status: Literal["pinned", "kept", "updated", "current"]

    @property
    def changed(self) -> bool:
        return self.status in ("pinned", "updated")


@dataclass(frozen=True)
class _Found:
    """A hub source located in the text: its key path, the YAML scalar holding it, and the
    repo and revision (None: unpinned) it names."""

    path: tuple[str | int, ...]
    spec: SourceKey
    node: yaml.ScalarNode
    repo: str
    revision: str | None

    @property
    def key(self) -> str:
        return dotted(self.path)


def dotted(path: tuple[str | int, ...]) -> str:
    """``maxmin_tulu2.paper.policy``, ``inverse_alignment.paper.embeddings[0]``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)[1:]


# --------------------------------------------------------------------------- finding sources


def hub_name(value: str, where: str) -> tuple[str, str | None] | None:
    """``(repo, revision)`` of a hub source (revision None when unpinned), None for a local
    path, by ``resolve_source``'s rule. Without ``@`` it raises only for a hub name (or an
    empty value); with ``@`` it raises for a local path given a revision: a params error."""
    try:
        src = resolve_source(value, where)
    except AssetError as err:
        if "@" in value or not value.strip():
            raise PinError(str(err)) from err
        return value.strip(), None
    return None if src.local else (src.name, src.revision)


def _is_str(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str"


def _scalars(path: tuple[str | int, ...], node: yaml.Node) -> Iterator[_Found]:
    """Hub sources held by ``node``, the value of key ``path[-1]``."""
    spec = SOURCE_KEYS.get(str(path[-1]))
    if spec is None:
        return
    if isinstance(node, yaml.SequenceNode):
        items = [((*path, i), item) for i, item in enumerate(node.value)]
    else:
        items = [(path, node)]
    for where, item in items:
        if not _is_str(item) or not item.value.startswith(spec.prefix):
            continue
        if spec.prefix and where == path:  # a prefix key holds sources in its list only
            continue
        value = item.value[len(spec.prefix) :]
        if value in spec.keywords:
            continue
        named = hub_name(value, dotted(where))
        if named is not None:
            yield _Found(where, spec, item, *named)


def find_sources(text: str) -> list[_Found]:
    """Every hub source of the ``paper:`` blocks and shared keys of ``text``, in file order."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        raise PinError("params file: top level must be a mapping")
    found: list[_Found] = []
    for section_key, section in root.value:
        if not isinstance(section, yaml.MappingNode):
            continue  # `profile: cpu`
        for key_node, value in section.value:
            key = key_node.value
            if key == PAPER and isinstance(value, yaml.MappingNode):
                for sub_key, sub_value in value.value:
                    found += _scalars((section_key.value, PAPER, sub_key.value), sub_value)
            elif key not in PROFILES:
                found += _scalars((section_key.value, key), value)
    return found


# --------------------------------------------------------------------------- asking the hub


def _hub_error(err: Exception, keys: str, repo_type: RepoType, repo: str) -> PinError:
    """A message that names the keys and the source, and says what to do."""
    where = f"{keys}: {repo}"
    try:
        from huggingface_hub import errors as hf
    except ImportError:  # a fake client in an environment without huggingface_hub
        hf = None
    if hf is not None:
        if isinstance(err, hf.OfflineModeIsEnabled):
            return HubUnreachableError(
                f"{where}: HF_HUB_OFFLINE is set; unset it to pin sources (needs network)"
            )
        if isinstance(err, hf.GatedRepoError):
            return PinError(
                f"{where}: gated {repo_type} repository; accept its terms on the hub and log "
                f"in (hf auth login or HF_TOKEN), then rerun"
            )
        if isinstance(err, hf.RepositoryNotFoundError):
            return PinError(
                f"{where}: the hub has no {repo_type} repository of that name (or it is "
                f"private: log in with hf auth login or HF_TOKEN); fix the name in params.yaml"
            )
        if isinstance(err, hf.HfHubHTTPError):
            return PinError(f"{where}: the hub answered with an error: {err}")
        if isinstance(err, hf.HTTPError):  # transport: DNS, refused, timeout
            return HubUnreachableError(_unreachable(where, err))
    if isinstance(err, OSError | TimeoutError):  # ConnectionError, socket.gaierror
        return HubUnreachableError(_unreachable(where, err))
    return PinError(f"{where}: cannot look up the {repo_type}: {type(err).__name__}: {err}")


def _unreachable(where: str, err: Exception) -> str:
    return (
        f"{where}: cannot reach the Hugging Face hub ({type(err).__name__}: {err}). Pinning "
        "needs network access (or HF_ENDPOINT set to a reachable mirror)"
    )


def lookup(client: HubClient, repo_type: RepoType, repo: str, keys: str) -> str:
    """The commit the hub's main branch of ``repo`` points at now."""
    ask = client.model_info if repo_type == MODEL else client.dataset_info
    try:
        sha = ask(repo).sha
    except Exception as err:  # the hub client raises many types; _hub_error sorts them
        raise _hub_error(err, keys, repo_type, repo) from err
    if not isinstance(sha, str) or not _HEX40.fullmatch(sha):
        raise PinError(f"{keys}: {repo}: the hub gave no commit hash (got {sha!r})")
    return sha


# --------------------------------------------------------------------------- editing


def _scalar_text(node: yaml.ScalarNode, value: str) -> str:
    """``value`` written in the node's quoting style."""
    quote = node.style if node.style in ("'", '"') else ""
    return f"{quote}{value}{quote}"


def _set(tree: Any, path: tuple[str | int, ...], value: str) -> None:
    for part in path[:-1]:
        tree = tree[part]
    tree[path[-1]] = value


def edit_text(text: str, changes: list[tuple[_Found, str]]) -> str:
    """``text`` with each found scalar replaced by its new value, in place.

    Raises ``PinError`` when a scalar is not written plainly on one line (an escape, a folded
    string) or when the re-parsed result differs from the original by more than the pins."""
    out = text
    for found, new in sorted(changes, key=lambda c: c[0].node.start_mark.index, reverse=True):
        node = found.node
        start, end = node.start_mark.index, node.end_mark.index
        if out[start:end] != _scalar_text(node, node.value) or not _SAFE_VALUE.fullmatch(new):
            raise PinError(
                f"{found.key}: cannot edit {out[start:end]!r} in place (line "
                f"{node.start_mark.line + 1}); write it as a plain one-line value"
            )
        out = out[:start] + _scalar_text(node, new) + out[end:]
    expected = yaml.safe_load(text)
    for found, new in changes:
        _set(expected, found.path, new)
    if yaml.safe_load(out) != expected:
        raise PinError("the edited file differs from the original by more than the pins")
    return out


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` in one step: a reader (DVC, a running stage) sees old or new, never
    half a file. The file's permissions are kept."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- the run


def pin_sources(
    params_path: str | os.PathLike[str],
    client: HubClient,
    update: bool = False,
    dry_run: bool = False,
) -> list[Pin]:
    """Pin the hub sources of ``params_path`` to their current commits; returns one row per
    source occurrence, in file order. Already pinned sources are not asked about unless
    ``update``. Each repo is asked once; every failing source is reported in one error and
    nothing is written then. ``dry_run`` asks the hub but writes nothing."""
    path = Path(params_path)
    try:
        text = path.read_bytes().decode("utf-8")  # bytes: keep the file's line endings
    except (OSError, UnicodeDecodeError) as err:
        raise PinError(f"{path}: cannot read: {err}") from err
    try:
        found = find_sources(text)
    except yaml.YAMLError as err:
        raise PinError(f"{path}: not valid YAML: {err}") from err

    wanted: dict[tuple[RepoType, str], list[str]] = {}
    for f in found:
        if f.revision is None or update:
            wanted.setdefault((f.spec.repo_type, f.repo), []).append(f.key)
    commits: dict[tuple[RepoType, str], str] = {}
    failures: list[str] = []
    for (repo_type, repo), keys in wanted.items():
        try:
            commits[repo_type, repo] = lookup(client, repo_type, repo, ", ".join(keys))
        except HubUnreachableError:
            raise
        except PinError as err:
            failures.append(str(err))
    if failures:
        raise PinError(f"{path}: cannot pin {len(failures)} source(s):\n  " + "\n  ".join(failures))

    pins: list[Pin] = []
    changes: list[tuple[_Found, str]] = []
    for f in found:
        commit = commits.get((f.spec.repo_type, f.repo))
        if commit is None:
            status, commit = "kept", str(f.revision)
        elif f.revision is None:
            status = "pinned"
        else:
            status = "current" if f.revision == commit else "updated"
        pins.append(Pin(f.key, f.spec.repo_type, f.repo, commit, f.revision, status))
        if pins[-1].changed:
            changes.append((f, f"{f.spec.prefix}{f.repo}@{commit}"))
    new_text = edit_text(text, changes) if changes else text
    for f, new in changes:  # the loaders must now accept every edited source as pinned
        if hub_name(new[len(f.spec.prefix) :], f.key) != (f.repo, new.rpartition("@")[2]):
            raise PinError(f"{f.key}: {new} does not read back as a pinned hub source")
    if changes and not dry_run:
        write_atomic(path, new_text)
    return pins


def format_table(pins: list[Pin]) -> str:
    """The rows as an aligned text table: key, type, source, commit, status."""
    rows = [("key", "type", "source", "commit", "status")]
    rows += [(p.key, p.repo_type, p.source, p.commit, p.status) for p in pins]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def mixed_commits(pins: list[Pin]) -> dict[str, set[str]]:
    """Repos pinned at more than one commit in the file (after ``--update`` they are not)."""
    seen: dict[str, set[str]] = {}
    for p in pins:
        seen.setdefault(f"{p.repo_type} {p.source}", set()).add(p.commit)
    return {repo: commits for repo, commits in seen.items() if len(commits) > 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--params", type=Path, default=None, help="params file (default: the repo's)"
    )
    parser.add_argument("--update", action="store_true", help="re-pin pinned sources too")
    parser.add_argument("--dry-run", action="store_true", help="print the table, write nothing")
    args = parser.parse_args(argv)
    params = args.params if args.params is not None else from_root(DEFAULT_PARAMS_FILE)

    from huggingface_hub import HfApi

    try:
        pins = pin_sources(params, HfApi(), update=args.update, dry_run=args.dry_run)
    except PinError as err:
        print(f"pin_sources: {err}", file=sys.stderr)
        return 1
    print(format_table(pins))
    for repo, commits in mixed_commits(pins).items():
        print(f"note: {repo} is pinned at {len(commits)} commits; --update aligns them")
    n = sum(p.changed for p in pins)
    verb = "would change" if args.dry_run else "changed"
    print(f"{params}: {verb} {n} of {len(pins)} hub source(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
