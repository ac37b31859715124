"""Reading the configuration: file → ``STREAMTRAIN_*`` environment → ``--set`` flags, validated into one
:class:`~streamtrain.config.schema.Config`; errors name the key and the fix; secrets never printed."""

from __future__ import annotations

import difflib
import json
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, SecretStr, ValidationError

from streamtrain.config.base import _MASK, ENV_PREFIX
from streamtrain.config.schema import Config
from streamtrain.errors import ConfigError


def _section_of(path: Sequence[Any]) -> type[BaseModel] | None:
    """The section model that holds ``path``'s last key (None when a parent is not a section)."""
    model: type[BaseModel] = Config
    for part in path[:-1]:
        annotation = getattr(model.model_fields.get(str(part)), "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _wants_text(path: Sequence[str]) -> bool:
    """Whether the field at ``path`` holds text (str, secret, string enum), so a value like
    ``2024`` or ``123456`` must stay the string it was typed as."""
    section = _section_of(path) if path else None
    field = section.model_fields.get(path[-1]) if section is not None else None
    if field is None:
        return False  # unknown key: validation names it later
    annotation = field.annotation
    if typing.get_origin(annotation) is Literal:
        return all(isinstance(option, str) for option in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [o for o in typing.get_args(annotation) if o is not type(None)]
        return bool(options) and all(o in (str, SecretStr) for o in options)
    return annotation in (str, SecretStr)


def _parse_scalar(text: str, path: Sequence[str]) -> Any:
    """Read a flag or env value: raw text for text fields, else JSON when it parses
    (numbers, bools, lists, null), else the raw string for pydantic to judge.

    A text field given as a JSON string literal (``"123456"`` with the quotes) gets the string
    inside: quoting is never needed, but whoever quotes a JSON-looking password out of habit must
    not end up with the quotes in it."""
    if _wants_text(path) and text != "null":  # ``null`` still clears an optional text field
        if len(text) >= 2 and text[0] == text[-1] == '"':
            try:
                decoded = json.loads(text)
            except ValueError:
                return text
            if isinstance(decoded, str):
                return decoded
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _set_path(tree: dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"`{'.'.join(path)}`: `{part}` is a value, not a section")
        node = child
    node[path[-1]] = value


def _read_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist; fix the --config path or STREAMTRAIN_CONFIG")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} is not valid {path.suffix.lstrip('.').upper()}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections at the top level")
    return data


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue  # STREAMTRAIN_CONFIG, STREAMTRAIN_STACK_* etc. are not config keys
        path = [part.lower() for part in name[len(ENV_PREFIX):].split("__")]
        _set_path(tree, path, _parse_scalar(value, path))
    return tree


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _explain(exc: ValidationError) -> str:
    lines = ["invalid configuration:"]
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "(top level)"
        env = ENV_PREFIX + "__".join(p.upper() for p in loc)
        if err["type"] == "extra_forbidden":
            section = _section_of(loc)  # did-you-mean among the keys valid beside it
            close = difflib.get_close_matches(loc[-1], list(section.model_fields) if section else [], n=1)
            hint = f"did you mean `{'.'.join(loc[:-1] + close)}`?" if close else "remove it"
            lines.append(f"  - `{key}`: unknown key; {hint}")
        else:
            shown = "<hidden>" if "password" in key else repr(err.get("input"))
            lines.append(
                f"  - `{key}`: {err['msg']} (got {shown}); fix it in the config file, {env}, or --set {key}=..."
            )
    return "\n".join(lines)


def load_config(
    path: str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Resolve the configuration from a file, the environment and ``key=value`` overrides.

    Called once at start by the CLI. Raises :class:`ConfigError` naming every bad key.
    """
    environ = os.environ if environ is None else environ
    path = path or environ.get(ENV_PREFIX + "CONFIG")
    tree = _read_file(Path(path)) if path else {}
    tree = _merge(tree, _env_overrides(environ))
    return validate_tree(tree, overrides)


def validate_tree(tree: Mapping[str, Any], overrides: Sequence[str] = ()) -> Config:
    """``tree`` (plain nested data) with ``section.key=value`` ``overrides`` applied, validated.

    The last step of :func:`load_config`; benches that build a base tree in code use it to honour
    ``--set`` exactly like the CLI. Raises :class:`ConfigError` naming every bad key."""
    tree = dict(tree)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        flag_tree: dict[str, Any] = {}
        parts = key.strip().split(".")
        _set_path(flag_tree, parts, _parse_scalar(value, parts))
        tree = _merge(tree, flag_tree)
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


def dump_config(config: Config) -> dict[str, Any]:
    """The resolved config as plain data, secrets replaced by a mask (safe to print or log)."""

    def mask(value: Any) -> Any:
        if isinstance(value, SecretStr):
            return _MASK
        if isinstance(value, BaseModel):
            return {name: mask(getattr(value, name)) for name in type(value).model_fields}
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, list):
            return [mask(v) for v in value]
        return value

    return mask(config)
