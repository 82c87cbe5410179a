"""The loader of typed stage configs from ``params.yaml``.

Each pipeline stage reads one section of ``params.yaml``. A section holds keys shared by
both profiles plus optional ``cpu:`` / ``paper:`` mappings that override them (merged
deeply, so a profile can override one key of a nested section), so the difference between
the offline CPU run and the GPU paper run is visible in one place::

    maxmin_gpt2:
      seed: 0
      ppo: {num_mini_batches: 2, kl_coef: 0.05}
      cpu: {ppo: {n_updates: 40}}
      paper: {ppo: {n_updates: 200}}

The config *classes* live beside the code that reads them (``Config`` at the top of
``pluralign.experiments.<section>``, cleanrl's ``Args``); this module only loads, so a new
field of one stage changes one module and reruns one stage.

Loading is strict (unknown keys, missing keys and wrong types are errors naming the key),
because a typo in a param that silently falls back to a default produces a result that
looks valid and is not. The one exception: a field whose default is ``None`` (a section or
key that only one profile uses, such as the cpu proxy's shape) may be left out.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from pluralign.pipeline.paths import from_root, project_root

PROFILES = ("cpu", "paper")
Profile = Literal["cpu", "paper"]
DEFAULT_PARAMS_FILE = "params.yaml"

T = TypeVar("T")
#: Per-key changes to a section: a mapping (dotted or nested keys) or a YAML string.
Overrides = Mapping[str, Any] | str | None


class ConfigError(ValueError):
    """A params file that cannot be turned into a stage config; the message names the key."""


@dataclass(frozen=True, kw_only=True)
class StageConfig:
    """Base of every stage config: the profile it was resolved for and its seed."""

    profile: Profile
    seed: int


#: The command every notebook stage runs; other stages (the docs refresh) read no section.
RUNNER = "pluralign.pipeline.runner"


def stage_param_sections(dvc_file: str | os.PathLike[str] | None = None) -> dict[str, list[str]]:
    """Notebook stage (= notebook file stem) -> the params sections it reads, its own first.

    Read from ``dvc.yaml``: a stage's ``params`` are ``profile``, its own section first, then
    any section it also reads (e.g. a shared recipe), so the pipeline file is the one place
    that says which sections a notebook uses. Stages whose command is not the notebook runner
    are left out."""
    path = Path(dvc_file) if dvc_file is not None else project_root() / "dvc.yaml"
    try:
        stages = yaml.safe_load(path.read_text(encoding="utf-8"))["stages"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise ConfigError(f"{path}: cannot read its stages: {err}") from err
    sections = {}
    for stage, spec in stages.items():
        if RUNNER not in str(spec.get("cmd", "")):
            continue
        own = [p for p in spec.get("params", []) if isinstance(p, str) and p != "profile"]
        if not own:
            raise ConfigError(f"{path}: stage {stage} lists no params section of its own")
        sections[stage] = own
    return sections


def notebook_sections(dvc_file: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """DVC stage (= notebook file stem) -> the params section it reads (its own)."""
    return {stage: own[0] for stage, own in stage_param_sections(dvc_file).items()}


# --------------------------------------------------------------------------- loading


def read_params(params_file: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Parse ``params.yaml`` (default: the project's) into a mapping, with clear errors."""
    path = from_root(params_file if params_file is not None else DEFAULT_PARAMS_FILE)
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
    section: str,
    cls: type[T],
    params_file: str | os.PathLike[str] | None = None,
    profile: str | None = None,
    overrides: Overrides = None,
) -> T:
    """Build ``cls`` from section ``section`` of ``params_file`` for ``profile``.

    ``params_file`` defaults to the project's ``params.yaml``; a relative path is taken from
    the project root, not the working directory (JupyterLab starts kernels in
    ``notebooks/``). ``overrides`` changes keys of the resolved section (see
    :func:`parse_overrides`), checked as strictly as the file."""
    params = read_params(params_file)
    chosen = resolve_profile(params, profile)
    if section not in params:
        raise ConfigError(f"{section}: section missing from the params file")
    merged = profile_section(params[section], chosen, section, cls)
    changes = parse_overrides(overrides)
    _check_known_keys(cls, changes, f"overrides[{section}]")
    merged = deep_merge(merged, changes)
    merged["profile"] = chosen
    return from_mapping(cls, merged, section)


def parse_overrides(overrides: Overrides) -> dict[str, Any]:
    """Per-key changes to a stage's section as a nested mapping.

    Accepts a mapping whose keys may be dotted paths (``{"ppo.kl_coef": 0.1}``) or nested
    (``{"ppo": {"kl_coef": 0.1}}``), or the same as a YAML string (``"{clone_k: 8}"``), the
    form ``papermill -p overrides ...`` and ``runner --set`` pass on a command line."""
    if overrides is None:
        return {}
    if isinstance(overrides, str):
        try:
            overrides = yaml.safe_load(overrides) if overrides.strip() else {}
        except yaml.YAMLError as err:
            raise ConfigError(f"overrides: not valid YAML: {err}") from err
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides: expected a mapping of keys to values, got {overrides!r}")
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
            raise ConfigError(f"overrides: {key!r} is not a key (want name or a.b.c)")
        if key.split(".")[0] in PROFILES or key.split(".")[0] == "profile":
            raise ConfigError(
                f"overrides.{key}: overrides apply to the resolved section; choose the "
                "profile with the `profile` parameter"
            )
        *parents, leaf = key.split(".")
        node: dict[str, Any] = {leaf: dict(value) if isinstance(value, Mapping) else value}
        for parent in reversed(parents):
            node = {parent: node}
        nested = deep_merge(nested, node)
    return nested


def profile_section(
    section: Any, profile: str, where: str, cls: type | None = None
) -> dict[str, Any]:
    """A section's shared keys with its ``profile`` overrides merged in deeply."""
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: must be a mapping, got {type(section).__name__}")
    if "profile" in section:
        raise ConfigError(f"{where}.profile: the profile is chosen at the top of the file")
    merged = {k: v for k, v in section.items() if k not in PROFILES}
    for name in PROFILES:
        override = section.get(name, {}) or {}
        if not isinstance(override, dict):
            raise ConfigError(f"{where}.{name}: must be a mapping, got {type(override).__name__}")
        if cls is not None:  # named with its profile (`sec.cpu.key`), running or not
            _check_known_keys(cls, override, f"{where}.{name}")
        if name == profile:
            merged = deep_merge(merged, override)
    return merged


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``, recursing where both hold a mapping."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def from_mapping(cls: type[T], values: dict[str, Any], where: str) -> T:
    """Strictly construct dataclass ``cls``: no unknown keys, right types, every field
    present except those whose default is ``None``; nested dataclass fields recurse."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    _check_known_keys(cls, values, where)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name not in values:
            if field.default is None:
                continue
            raise ConfigError(f"{where}.{field.name}: missing key")
        kwargs[field.name] = _coerce(values[field.name], hints[field.name], f"{where}.{field.name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # a dataclass's own __post_init__ checks
        raise ConfigError(f"{where}: {err}") from err


def _check_known_keys(cls: type, values: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in values:
        if key not in known:
            raise ConfigError(
                f"{where}.{key}: unknown key (known keys: {', '.join(sorted(known))})"
            )
        field_type = typing.get_type_hints(cls)[key]
        nested = _dataclass_of(field_type)
        if nested is not None and isinstance(values[key], dict):
            _check_known_keys(nested, values[key], f"{where}.{key}")


def _dataclass_of(annotation: Any) -> type | None:
    """The dataclass in ``X`` or ``X | None``, else None."""
    if dataclasses.is_dataclass(annotation):
        return annotation  # type: ignore[return-value]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0] if dataclasses.is_dataclass(args[0]) else None
    return None


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against ``annotation``; ints are accepted where floats are expected."""
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return from_mapping(annotation, value, where)
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
        if math.isnan(value):
            raise ConfigError(f"{where}: expected a number, got nan")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"{where}: unsupported annotation {annotation!r}")  # a bug in a config class
