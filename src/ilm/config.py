"""TOML recipes into a stage's dataclass config, with `--a.b=c` overrides; unknown keys are rejected.

A recipe is plain data: every field has a dataclass default (the recipe's numbers), a TOML file sets what
differs, and command-line overrides set what differs for one run. Errors name the file and the key path.

Paths: a relative path written in a recipe file is read against the recipe's base directory, so a recipe
works from any working directory. The base is `--base-dir` (or $ILM_BASE_DIR) when given; otherwise, for a
recipe inside a folder named `recipes` (at any depth: `recipes/tiny.toml`, `recipes/data/code.toml`), the
folder that holds `recipes/` (the project root, which is what the shipped recipes' `runs/demo/...` paths
mean); otherwise the recipe file's own folder. A path given as a command-line override is read as typed,
against the working directory. Only the keys in PATH_KEYS hold paths.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class RecipeError(ValueError):
    """A recipe that does not fit its stage's config."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except RecipeError as err:
                errors.append(str(err))
        raise RecipeError(errors[0] if errors else f"{where}: cannot be {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a table, got {value!r}")
        return from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a table, got {value!r}")
        return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()} if args else value
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise RecipeError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict; unknown keys raise, naming the allowed ones."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        prefix = f"{where}: " if where else ""
        raise RecipeError(f"{prefix}unknown key(s) {unknown}; allowed: {sorted(types_)}")
    kwargs = {k: _coerce(v, types_[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{where or cls.__name__}: {err}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value), the value read as a TOML value when it parses as one."""
    key, sep, raw = text.removeprefix("--").partition("=")
    if not sep or not key:
        raise RecipeError(f"override {text!r} is not of the form --section.key=value")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def _list_index(node: list[Any], part: str, text: str, where: str) -> int:
    """The element of a list that `part` names: its index (0, 1, ...) or, in a list of named tables such as
    [[sources]] or [[stages]], its `name`."""
    names = [x.get("name") for x in node if isinstance(x, dict)]
    if part in names:
        return names.index(part)
    try:
        i = int(part)
    except ValueError:
        i = None
    if i is not None and -len(node) <= i < len(node):
        return i
    named = f"names {names}, or " if any(n is not None for n in names) else ""
    raise RecipeError(f"override {text!r}: {where} has no element {part!r} (use {named}an index 0..{len(node) - 1})")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each `a.b.c=value`; a list's element is picked by index or, in a list of named tables, by name
    (`--sources.text.path=DIR`, `--stages.long.window=512`)."""
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for depth, part in enumerate(path):
            where = ".".join(path[:depth]) or "the recipe"
            last = depth == len(path) - 1
            if isinstance(node, list):
                i = _list_index(node, part, text, where)
                if last:
                    node[i] = value
                else:
                    node = node[i]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise RecipeError(f"override {text!r}: {where} is {node!r}, not a table")
    return data


# Recipe keys whose values (a string or a list of strings) are file-system paths, in every stage's config.
PATH_KEYS = frozenset({
    "run_dir", "tokenizer", "init", "actor", "reward_model", "critic", "path", "eval_source", "train", "eval",
    "queries", "ptx", "ptx_eval", "check", "inbox", "rm_data", "rm_eval", "repos", "documents",
})
# Tables whose keys are names chosen by the user (domains, sources), never config keys: not searched for paths.
_FREE_TABLES = frozenset({"conditions", "mixture", "overrides"})
BASE_DIR_ENV = "ILM_BASE_DIR"


def recipe_base(path: str | Path, base_dir: str | Path | None = None) -> Path:
    """The directory relative paths in recipe `path` are read against (the rule in the module docstring)."""
    chosen = base_dir or os.environ.get(BASE_DIR_ENV)
    if chosen:
        return Path(chosen).expanduser().resolve()
    recipe = Path(path).resolve()
    for parent in recipe.parents:
        if parent.name == "recipes":
            return parent.parent
    return recipe.parent


def resolve_paths(data: Any, base: Path, key: str = "") -> Any:
    """`data` with every relative path under a PATH_KEYS key made absolute against `base`."""
    if isinstance(data, dict):
        if key in _FREE_TABLES:
            return data
        return {k: resolve_paths(v, base, k) for k, v in data.items()}
    if isinstance(data, list):
        return [resolve_paths(v, base, key) for v in data]
    if isinstance(data, str) and key in PATH_KEYS and data and not Path(data).expanduser().is_absolute():
        return str(base / data)
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
         base_dir: str | Path | None = None) -> T:
    """Dataclass `cls` from a TOML file (or defaults when None), then the overrides. Relative paths in the
    file are read against `recipe_base(path, base_dir)`; those in overrides against the working directory."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as err:
            raise RecipeError(f"{path}: invalid TOML ({err})") from None
        data = resolve_paths(data, recipe_base(path, base_dir))
    data = apply_overrides(data, overrides or [])
    try:
        return from_dict(cls, data)
    except RecipeError as err:
        raise RecipeError(f"{path}: {err}" if path else str(err)) from None


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


# ----------------------------------------------------------------------------- writing a recipe back


def to_toml(config: Any) -> str:
    """Dataclass `config` as a TOML recipe that `load` reads back to an equal dataclass. None values are left
    out (every field that may be None defaults to None); relative paths are written absolute, against the
    working directory, which is what they meant to the run. (The standard library reads TOML but does not
    write it: this covers what recipes hold, tables, arrays of tables, strings, numbers, booleans, arrays.)"""
    data = resolve_paths(_without_none(dataclasses.asdict(config)), Path.cwd())
    lines: list[str] = []
    _toml_table(data, [], lines)
    return "\n".join(lines).strip("\n") + "\n"


def _without_none(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _without_none(v) for k, v in data.items() if v is not None}
    if isinstance(data, (list, tuple)):
        return [_without_none(v) for v in data]
    return data


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):  # JSON's escapes are a subset of TOML's basic-string escapes
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as TOML")


def _toml_table(data: dict[str, Any], path: list[str], lines: list[str]) -> None:
    """The keys of one table, then its sub-tables ([a.b]) and arrays of tables ([[a.b]])."""
    def is_table_array(v: Any) -> bool:
        return isinstance(v, (list, tuple)) and bool(v) and all(isinstance(x, dict) for x in v)

    for key, value in data.items():
        if not isinstance(value, dict) and not is_table_array(value):
            lines.append(f"{_toml_key(str(key))} = {_toml_value(value)}")
    for key, value in data.items():
        name = ".".join(_toml_key(str(k)) for k in [*path, key])
        if isinstance(value, dict):
            lines += ["", f"[{name}]"]
            _toml_table(value, [*path, key], lines)
        elif is_table_array(value):
            for item in value:
                lines += ["", f"[[{name}]]"]
                _toml_table(item, [*path, key], lines)
