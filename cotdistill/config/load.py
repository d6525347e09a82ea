"""Loading a run's configuration: one YAML file, dotted overrides, every value checked before anything starts.

    config = load_config("pipelines/demo.yaml", ["generate.num_samples=4", "train.sft.max_steps=10"])

The YAML keys are the dataclass fields of config/run.py and config/sections.py. A key that is not a field is an
error naming the key and the file, with the nearest known key (a misspelt `temprature` is never silently
ignored); an override's mistake is blamed on the command line. `engine`, `sft`, `peft` and `dpo` are passed
through as they are, to `vllm.LLM(...)`, `trl.SFTConfig(...)`, `peft.LoraConfig(...)` and `trl.DPOConfig(...)`, and
`onpolicy`'s keys besides its own to TRL's DistillationConfig (checked by its rules).
Overrides are dotted `key=value` pairs, parsed as YAML values.

Then every field's Check (core/fields.py) and every section's rules run, in the order the YAML declares them;
the first problem stops the load. A mistake costs seconds, never an engine start.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Iterator

import yaml

from cotdistill.config.run import RunConfig
from cotdistill.core.fields import ConfigError
from cotdistill.teachers import BACKENDS


class UnknownKey(ConfigError):
    """A key that is no field: kept apart so that load_config can blame the override that wrote it."""

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key


def _check_type(value: Any, hint: Any, key: str, source: str) -> Any:
    """Build `hint` from a YAML value, or raise ConfigError naming the key and the file."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key, source)
            except UnknownKey:
                raise
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{source}: {key}: bad value {value!r}")
    if dataclasses.is_dataclass(hint):
        return _from_dict(hint, value, source, prefix=key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        (item_hint,) = typing.get_args(hint)
        return [_check_type(v, item_hint, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        item_hint = typing.get_args(hint)[1] if typing.get_args(hint) else Any
        if dataclasses.is_dataclass(item_hint):  # named sections (evaluate.extra_models)
            return {name: _check_type(v, item_hint, f"{key}.{name}", source) for name, v in value.items()}
        return dict(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ConfigError(f"{source}: {key} must be {hint.__name__}, got {value!r}")
        return value
    return value


def _backend_settings(data: dict[str, Any], source: str, prefix: str) -> tuple[str | None, type | None]:
    """A model section's backend settings: (its YAML key, the backend's settings class), the key being the backend's
    name. Another backend's settings beside them would be silently ignored: refused."""
    backend = data.get("backend", "vllm")
    for name, declared in BACKENDS.items():
        if name in data and name != backend and declared.settings is not None:
            raise ConfigError(f"{source}: {prefix}{name}: settings of the {name} backend, and {prefix}backend is "
                              f"{backend!r}: remove them, or set {prefix}backend: {name}")
    declared = BACKENDS.get(backend)
    return (backend, declared.settings) if declared is not None and declared.settings is not None else (None, None)


def _from_dict(cls: type, data: Any, source: str, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the file'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    named = {f.name: f.metadata["key_named_by"] for f in fields.values() if "key_named_by" in f.metadata}
    # a field that takes every key that is none of the others (onpolicy's TRL fields, checked by its rules)
    other = next((f.name for f in fields.values() if "other_keys" in f.metadata), None)
    yaml_keys = set(fields) - set(named) - {other}
    settings_key, settings_class = _backend_settings(data, source, prefix) if named else (None, None)
    if settings_key is not None:
        yaml_keys.add(settings_key)
    unknown = sorted(set(data) - yaml_keys)
    if other is not None:
        data = {**{k: v for k, v in data.items() if k in yaml_keys}, other: {k: data[k] for k in unknown}}
    elif unknown:
        close = difflib.get_close_matches(unknown[0], yaml_keys, n=1)
        hint = f"did you mean '{prefix}{close[0]}'? " if close else ""
        raise UnknownKey(f"{source}: unknown key '{prefix}{unknown[0]}' ({hint}valid keys here: "
                         f"{', '.join(sorted(yaml_keys))})", prefix + unknown[0])
    kwargs = {}
    for name, f in fields.items():
        if name in named:  # the backend's settings, under the backend's name
            if settings_key in data:
                kwargs[name] = _from_dict(settings_class, data[settings_key], source, prefix + settings_key + ".")
        elif name in data:
            kwargs[name] = _check_type(data[name], hints[name], prefix + name, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key '{prefix}{name}'")
    return cls(**kwargs)


def apply_override(data: dict[str, Any], override: str, source: str) -> None:
    """Set `a.b.c=value` (value parsed as YAML) into the raw config mapping."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key=value")
    dotted, raw_value = override.split("=", 1)
    keys = dotted.strip().split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: override {dotted!r}: '{key}' is not a mapping")
    node[keys[-1]] = yaml.safe_load(raw_value)


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a pipeline YAML, apply dotted overrides, and check every key against the dataclasses."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    for override in overrides:
        apply_override(data, override, f"{path} (override {override!r})")
    try:
        config = _from_dict(RunConfig, data, str(path))
    except UnknownKey as e:  # a key an override wrote is the command line's mistake, not the file's
        written = [o for o in overrides if e.key.startswith(o.split("=", 1)[0].strip())
                   or o.split("=", 1)[0].strip().startswith(e.key)]
        if written:
            raise ConfigError(f"override {written[0]!r} on the command line: "
                              + str(e).removeprefix(f"{path}: ")) from None
        raise
    if (config.teacher is None) == (not config.teachers):
        raise ConfigError(f"{path}: " + ("set `teacher` or `teachers`, not both" if config.teachers else
                                         "missing required key 'teacher' (or 'teachers', a list of named teachers)"))
    if config.teachers:
        config.teacher = config.teachers[0]  # the teacher meant where one is
    config._overrides = list(overrides)
    validate(config, str(path))
    return config


def override_key(override: str) -> str:
    return override.split("=", 1)[0].strip()


def merge_overrides(recorded: list[str], own: list[str], where: str) -> list[str]:
    """`own` after `recorded` (what an earlier command of the same job ran with): an override of `own` that sets a
    recorded key to another value is refused, naming both; one it leaves out is inherited."""
    own_values = {override_key(o): yaml.safe_load(o.split("=", 1)[1]) for o in own if "=" in o}
    for old in recorded:
        key = override_key(old)
        if key in own_values and own_values[key] != yaml.safe_load(old.split("=", 1)[1]):
            raise ConfigError(f"{key}: this command sets {key}={own_values[key]!r}, and {where} ran with {old!r}; "
                              "run every part with the same settings (or leave it out to inherit it)")
    return [o for o in recorded if override_key(o) not in own_values] + list(own)


def check_fields(section: Any, run: RunConfig, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(key, problem) for every field whose value its Check refuses, and every rule of a section, in the order
    the fields are declared, through nested sections and lists and mappings of them."""
    for f in dataclasses.fields(section):
        if f.name == "teacher" and getattr(section, "teachers", None):
            continue  # the first of `teachers`, checked there under its own key
        value = getattr(section, f.name)
        key = prefix + (getattr(section, f.metadata["key_named_by"]) if "key_named_by" in f.metadata else f.name)
        check = f.metadata.get("check")
        problem = check.problem(value) if check is not None else None
        if problem:
            yield key, problem
            return  # a section's rules may rely on its fields' values
        if dataclasses.is_dataclass(value):
            yield from check_fields(value, run, key + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    yield from check_fields(item, run, f"{key}[{i}].")
        elif isinstance(value, dict):
            for name, item in value.items():
                if dataclasses.is_dataclass(item):
                    yield from check_fields(item, run, f"{key}.{name}.")
    if hasattr(section, "rules"):
        for key, problem in section.rules(run):
            yield (prefix + key).rstrip("."), problem


def validate(config: RunConfig, source: str) -> None:
    """Every value a run will use, checked before anything starts; the first problem is raised as a ConfigError
    naming the file and the key."""
    for key, problem in check_fields(config, config):  # lazily: the first problem stops the checks
        raise ConfigError(f"{source}: {key}: {problem}")


def to_dict(section: Any) -> Any:
    """A config (or section) as the YAML that would load it: a backend's settings under the backend's name."""
    if dataclasses.is_dataclass(section):
        out = {}
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if "key_named_by" in f.metadata:
                if value is not None:
                    out[getattr(section, f.metadata["key_named_by"])] = to_dict(value)
                continue
            if "other_keys" in f.metadata:  # written as the section's own keys
                out.update(to_dict(value))
                continue
            out[f.name] = to_dict(value)
        return out
    if isinstance(section, list):
        return [to_dict(v) for v in section]
    if isinstance(section, dict):
        return {k: to_dict(v) for k, v in section.items()}
    return section


def dump_config(config: RunConfig) -> str:
    data = to_dict(config)
    if config.teachers:  # `teacher` is the first of them, not a key the user wrote
        del data["teacher"]
    return yaml.safe_dump(data, sort_keys=False)
