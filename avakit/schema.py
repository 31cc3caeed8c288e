"""Typed dataclasses from plain dicts: one builder that checks types, choices and ranges.

`build(cls, data)` walks the dataclass field types, converts what is safe (int -> float, tuples
-> lists) and applies each field's metadata rules (choices, ge/gt/le/lt, length, max_length,
keys, nonempty, filename). Every problem is one `AvakitError` naming the dotted key, with a
"did you mean" hint for unknown keys. `avakit.config` declares the schema; this is the engine.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import re
import types
import typing
from collections.abc import Sequence
from typing import Any, NamedTuple

from avakit.errors import AvakitError


class Root(NamedTuple):
    """The whole schema being built and the key prefix of its top level."""

    cls: type
    prefix: str


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass schema, sections included."""
    keys = []
    for name, tp in typing.get_type_hints(cls).items():
        keys.append(prefix + name)
        if dataclasses.is_dataclass(tp):
            keys += _all_keys(tp, f"{prefix}{name}.")
    return keys


def _unknown_key(key: str, valid: Sequence[str], prefix: str, root: Root) -> AvakitError:
    """Error for an unknown key, suggesting the closest sibling or else any close key of `root`."""
    close = difflib.get_close_matches(key, list(valid), n=1)
    if close:
        hint = prefix + close[0]
    else:
        paths = _all_keys(root.cls)
        leaf = difflib.get_close_matches(key, [p.rsplit(".", 1)[-1] for p in paths], n=1)
        hint = next((root.prefix + p for p in paths if leaf and p.rsplit(".", 1)[-1] == leaf[0]), "")
    suffix = f" (did you mean '{hint}'?)" if hint else ""
    shown = key if len(key) <= 60 else key[:57] + "..."
    return AvakitError(f"unknown key '{prefix}{shown}'{suffix}")


def _describe(tp: Any) -> str:
    """Human name of a type annotation, for error messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if origin is list:
        return f"list of {_describe(args[0])}"
    if origin is dict:
        return f"mapping of {_describe(args[0])} to ({_describe(args[1])})"
    return "mapping" if dataclasses.is_dataclass(tp) else getattr(tp, "__name__", str(tp))


def _short(value: Any) -> str:
    """repr of a value, cut to 60 characters (a crafted file can hold a 10^5-digit number)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**60:
        return f"an integer of about {value.bit_length() * math.log10(2):.0f} digits"
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def show(value: Any) -> str:
    """A short one-line rendering of a bad value: its type and repr."""
    return f"{type(value).__name__} {_short(value)}"


def _coerce(value: Any, tp: Any, key: str, root: Root) -> Any:
    """Check `value` against annotation `tp` and return it converted (int -> float, new lists)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, {} if value is None else value, key + ".", root)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, key, root)
    if origin is list and isinstance(value, list | tuple):
        return [_coerce(v, args[0], f"{key}[{i}]", root) for i, v in enumerate(value)]
    elif origin is dict and isinstance(value, dict):
        return {str(k): _coerce(v, args[1], f"{key}.{k}", root) for k, v in value.items()}
    elif tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value) if isinstance(value, float) or abs(value) < 2**1023 else math.inf
        if not math.isfinite(number):
            raise AvakitError(f"{key}: must be a finite number (got {_short(value)})")
        return number
    elif tp in (int, str, bool) and type(value) is tp:  # type(): True is not an int here
        return value
    raise _expected(tp, key, value)


def _coerce_union(value: Any, tp: Any, key: str, root: Root) -> Any:
    """`value` converted by the first arm of union `tp` that takes it; else the clearest error."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for arm in (a for a in args if a is not type(None)):
        try:
            return _coerce(value, arm, key, root)
        except AvakitError as exc:
            errors.append((typing.get_origin(arm) or arm, exc))
    for kind, exc in errors:  # a value of the arm's kind (a list, a number): its own error is clearer
        if kind in (list, dict, float) and isinstance(value, kind if kind is not float else int | float):
            raise exc
    raise _expected(tp, key, value)


def _expected(tp: Any, key: str, value: Any) -> AvakitError:
    """The error for a value that is not of type `tp`."""
    return AvakitError(f"{key}: expected {_describe(tp)}, got {show(value)}")


_OPS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}  # metadata bound -> operator
_NOT_IN_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")


def _check_meta(value: Any, meta: typing.Mapping[str, Any], key: str, root: Root) -> None:
    """Apply a field's metadata rules (choices, bounds, length, keys, nonempty) to its value."""
    if value is None:
        return
    _check_choices(value, meta.get("choices"), key)
    if meta.get("nonempty") and (not value or isinstance(value, dict) and not all(value.values())):
        raise AvakitError(f"{key}: must not be empty")
    if "length" in meta and len(value) != meta["length"]:
        raise AvakitError(f"{key}: expected {meta['length']} values, got {len(value)}")
    if "max_length" in meta and len(value) > meta["max_length"]:
        raise AvakitError(f"{key}: at most {meta['max_length']} values, got {len(value)}")
    if meta.get("filename") and (value in (".", "..") or len(value) > 100 or _NOT_IN_NAME.search(value)):
        raise AvakitError(
            f"{key}: must be a plain folder name (at most 100 characters, no / \\ or "
            f"control characters, not . or ..), got {_short(value)}"
        )
    if "keys" in meta and isinstance(value, dict):
        for name in value:
            if name not in meta["keys"]:
                raise _unknown_key(name, meta["keys"], key + ".", root)
    _check_bounds(value, meta, key)


def _check_choices(value: Any, choices: Any, key: str) -> None:
    """Refuse a value not among `choices` (when given), with a "did you mean" hint."""
    if choices and value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        allowed = ", ".join(f"'{c}'" for c in choices)
        raise AvakitError(f"{key}: must be one of {allowed} (got {_short(value)}{hint})")


def _check_bounds(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    """Apply the metadata bounds (ge, gt, le, lt) to a value or to each item of a list."""
    items = enumerate(value) if isinstance(value, list) else [(None, value)]
    for i, item in items:
        for rule, op in _OPS.items():
            if rule in meta and not getattr(operator, rule)(item, meta[rule]):
                where = key if i is None else f"{key}[{i}]"
                raise AvakitError(f"{where}: must be {op} {meta[rule]} (got {_short(item)})")


def build(cls: type, data: Any, prefix: str = "", root: Root | None = None) -> Any:
    """Build dataclass `cls` from a plain dict, recursively, validating every field.

    `prefix` starts every key named in an error; `root` is the whole schema (for "did you mean"
    hints across sections; default `cls` itself).
    """
    root = root or Root(cls, prefix)
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "config"
        raise AvakitError(f"{where}: expected a mapping, got {show(data)}")
    hints = typing.get_type_hints(cls)
    for name in data:
        if name not in hints:
            raise _unknown_key(str(name), list(hints), prefix, root)
    kwargs = {}
    for fld in dataclasses.fields(cls):
        if fld.name in data:
            key = prefix + fld.name
            kwargs[fld.name] = _coerce(data[fld.name], hints[fld.name], key, root)
            _check_meta(kwargs[fld.name], fld.metadata, key, root)
    return cls(**kwargs)


def check_field(cls: type, name: str, value: Any, key: str) -> Any:
    """`value` checked (and converted) as field `name` of dataclass `cls`; errors name `key`."""
    fld = next(f for f in dataclasses.fields(cls) if f.name == name)
    root = Root(cls, "")
    value = _coerce(value, typing.get_type_hints(cls)[name], key, root)
    _check_meta(value, fld.metadata, key, root)
    return value
