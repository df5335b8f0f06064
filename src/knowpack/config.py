"""Strict typed configs: YAML in, ``key.sub=value`` overrides, one error listing every problem.

A config is a (nested) dataclass. ``load_config(cls, path, overrides)`` reads YAML, applies the
overrides, checks every key and value against the field types and their metadata, and either
returns the built instance or raises one ``ConfigError`` that lists *all* problems at once, each
naming the dotted key, the bad value and what is allowed::

    @dataclass
    class Train:
        lr: float = field(default=1e-3, metadata={"min": 0, "help": "peak learning rate"})
        method: str = field(default="lora", metadata={"choices": methods.names})  # callable: dynamic
        targets: list[str] = field(default_factory=lambda: ["gate_proj", "up_proj"])

    cfg = load_config(Train, "train.yaml", ["lr=3e-4", "targets=[gate_proj]"])

Supported field types: bool, int, float (an int is accepted), str, Path, Any, list[T], tuple[T, ...],
tuple[A, B], dict[str, T], Optional/unions, Literal[...], Enum and nested dataclasses. Field
metadata: ``min`` and ``max`` (inclusive), ``choices`` (a collection, or a callable returning one,
so that lists such as the registered methods are read when the config is checked) and ``help``.
A ``__post_init__`` that raises ``ValueError`` is reported as a problem of that section.

YAML is read with ``yaml.safe_load`` semantics plus two fixes for configs: ``1e-3`` is a float (YAML
1.1 reads it as a string) and a key given twice in one mapping is an error, not a silent overwrite.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import hashlib
import json
import logging
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, TypeVar, Union

import yaml

from knowpack.errors import ConfigError
from knowpack.io import write_text

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = ["load_config", "to_dict", "save_config", "config_hash", "dump_yaml", "parse_overrides",
           "describe_config"]

# Floats in exponent form without a dot ("1e-3", "5E4"), which YAML 1.1 leaves as strings.
_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float and records keys given twice in one mapping."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, int, int]] = []  # (key, line, first line)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:  # type: ignore[override]
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # unhashable key; the base class reports it
                continue
            if first != key_node.start_mark.line + 1:
                self.duplicates.append((str(key), key_node.start_mark.line + 1, first))
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes strings which ``_Loader`` would read as floats, so dumps round-trip."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789."))


class _Invalid:
    """Marks a value that failed validation (its problems are already recorded)."""


_INVALID = _Invalid()


class _Ctx:
    """Collects problems and knows where each key came from (YAML line or override)."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.lines: dict[str, int] = {}
        self.overrides: dict[str, str] = {}

    def where(self, key: str) -> str:
        if key in self.overrides:
            return f" (from override '{self.overrides[key]}')"
        if key in self.lines:
            return f" (line {self.lines[key]})"
        return ""

    def add(self, key: str, message: str) -> _Invalid:
        self.problems.append(f"{key or '<top level>'}{self.where(key)}: {message}")
        return _INVALID


# --------------------------------------------------------------------------------------- types

def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return "any value"
    if tp is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (list, tuple) and args:
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return f"a list of {len(args)} items ({', '.join(_type_name(a) for a in args)})"
        return f"a list of {_type_name(args[0])}"
    if origin is dict and args:
        return f"a mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping (section {tp.__name__})"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if tp is Path:
        return "a path (str)"
    if tp in (list, tuple):
        return "a list"
    if tp is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _suggest(word: str, options: Iterable[Any]) -> str:
    names = [str(o) for o in options]
    close = difflib.get_close_matches(str(word), names, n=1, cutoff=0.6)
    if not close and str(word):  # abbreviations: "para" for "paraphrase"
        close = [n for n in names if n.startswith(str(word))]
    return f" (did you mean '{close[0]}'?)" if len(close) == 1 else ""


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except NameError as exc:  # a programming error in the config class, not a user error
        raise TypeError(f"cannot resolve the field types of {cls.__name__}: {exc}; define the types "
                        "it uses at module level") from exc


def _convert(tp: Any, value: Any, key: str, ctx: _Ctx) -> Any:
    """Check `value` against type `tp`; return the converted value or _INVALID (problem recorded)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:
            return _convert(arms[0], value, key, ctx)
        for arm in arms:
            trial = _Ctx()
            out = _convert(arm, value, key, trial)
            if not trial.problems:
                return out
        return ctx.add(key, f"got {_show(value)}, expected {_type_name(tp)}")
    if origin is Literal:
        for allowed in args:
            if type(value) is type(allowed) and value == allowed:
                return value
        hint = _suggest(value, args) if isinstance(value, str) else ""
        return ctx.add(key, f"{_show(value)} is not allowed; choose one of "
                            f"{', '.join(repr(a) for a in args)}{hint}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value, key, ctx)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if value == member.value or value == member.name or value is member:
                return member
        hint = _suggest(value, [m.value for m in tp]) if isinstance(value, str) else ""
        return ctx.add(key, f"{_show(value)} is not allowed; choose one of "
                            f"{', '.join(repr(m.value) for m in tp)}{hint}")
    if origin in (list, tuple) or tp in (list, tuple):
        return _convert_sequence(tp, origin or tp, args, value, key, ctx)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            return ctx.add(key, f"got {_show(value)}, expected {_type_name(tp)}")
        if not args:
            return dict(value)
        out: dict[Any, Any] = {}
        bad = False
        for k, v in value.items():
            ck = _convert(args[0], k, f"{key}.{k}", ctx)
            cv = _convert(args[1], v, f"{key}.{k}", ctx)
            bad = bad or ck is _INVALID or cv is _INVALID
            out[ck] = cv
        return _INVALID if bad else out
    if tp is bool:
        if isinstance(value, bool):
            return value
        return ctx.add(key, f"got {_show(value)}, expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        fix = f"; write {int(value)}" if isinstance(value, float) and value.is_integer() else ""
        return ctx.add(key, f"got {_show(value)}, expected an int{fix}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return ctx.add(key, f"got {_show(value)}, expected a number (float)")
    if tp is str:
        if isinstance(value, str):
            return value
        return ctx.add(key, f"got {_show(value)}, expected a string; quote it: \"{value}\"")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        return ctx.add(key, f"got {_show(value)}, expected a path (str)")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        return ctx.add(key, f"got {_show(value)}, expected {_type_name(tp)}")
    raise TypeError(f"config field '{key}' has an unsupported type {tp!r}")


def _convert_sequence(tp: Any, origin: Any, args: tuple, value: Any, key: str, ctx: _Ctx) -> Any:
    if not isinstance(value, (list, tuple)):
        fix = f"; write [{value}]" if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""
        return ctx.add(key, f"got {_show(value)}, expected {_type_name(tp)}{fix}")
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            return ctx.add(key, f"got {len(value)} items {_show(list(value))}, expected {_type_name(tp)}")
        item_types = list(args)
    else:
        item_types = [args[0] if args else Any] * len(value)
    items = [_convert(t, v, f"{key}[{i}]", ctx) for i, (t, v) in enumerate(zip(item_types, value))]
    if any(i is _INVALID for i in items):
        return _INVALID
    return tuple(items) if origin is tuple else items


def _check_metadata(meta: Mapping[str, Any], value: Any, key: str, ctx: _Ctx) -> None:
    if value is None:
        return
    help_text = f" ({meta['help']})" if meta.get("help") else ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high = meta.get("min"), meta.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            bound = (f"between {low} and {high}" if low is not None and high is not None
                     else f">= {low}" if low is not None else f"<= {high}")
            ctx.add(key, f"got {_show(value)}, must be {bound}{help_text}")
    if "choices" in meta:
        choices = meta["choices"]
        allowed = list(choices() if callable(choices) else choices)
        values = value if isinstance(value, (list, tuple)) else [value]
        for i, v in enumerate(values):
            if v not in allowed:
                sub = f"{key}[{i}]" if values is value else key
                hint = _suggest(v, allowed) if isinstance(v, str) else ""
                ctx.add(sub, f"{_show(v)} is not allowed; choose one of "
                             f"{', '.join(repr(a) for a in allowed)}{hint}{help_text}")


def _build(cls: type, value: Any, key: str, ctx: _Ctx) -> Any:
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        return ctx.add(key, f"got {_show(value)}, expected {_type_name(cls)}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{key}." if key else ""
    before = len(ctx.problems)
    for name in value:
        if name not in fields:
            dotted = f"{prefix}{name}"
            hint = _suggest(name, fields) or f"; allowed keys{f' under {key!r}' if key else ''}: " + ", ".join(fields)
            ctx.add(dotted, f"unknown key{hint}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        dotted = f"{prefix}{name}"
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                ctx.add(dotted, f"missing required key ({_type_name(hints[name])})")
            continue
        converted = _convert(hints[name], value[name], dotted, ctx)
        if converted is not _INVALID:
            _check_metadata(f.metadata, converted, dotted, ctx)
            kwargs[name] = converted
    if len(ctx.problems) > before:
        return _INVALID
    try:
        return cls(**kwargs)
    except ValueError as exc:  # __post_init__ cross-field checks
        return ctx.add(key, str(exc))


# ------------------------------------------------------------------------------------ loading

def _key_lines(node: Any, prefix: str, out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                dotted = f"{prefix}{k.value}"
                out.setdefault(dotted, k.start_mark.line + 1)
                _key_lines(v, dotted + ".", out)


def _read_yaml(path: Path, ctx: _Ctx) -> Any:
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(["file not found; check the path"], source=source) from None
    except UnicodeDecodeError as exc:
        raw = path.read_bytes()
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError([f"line {line}: invalid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"],
                          source=source) from None
    try:
        loader = _Loader(text)  # the reader rejects control characters here, before any parsing
    except yaml.reader.ReaderError as exc:
        raise ConfigError([_reader_problem(text, exc)], source=source) from None
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError([f"{where}YAML syntax error: {what}"], source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"YAML error: {exc}"], source=source) from None
    finally:
        loader.dispose()
    for dup, line, first in loader.duplicates:
        ctx.problems.append(f"line {line}: key '{dup}' is given twice (first at line {first}); keep one")
    _key_lines(node, "", ctx.lines)
    return {} if data is None else data


def _reader_problem(text: str, exc: Any) -> str:
    """'line N: ...' for a character YAML does not allow (control characters, U+FFFE, ...)."""
    line = text.count("\n", 0, exc.position) + 1
    char = exc.character if isinstance(exc.character, str) else chr(exc.character or 0)
    return f"line {line}: character U+{ord(char):04X} is not allowed in YAML; remove it"


def _parse_value(text: str) -> Any:
    value = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    if value is None and text.strip() not in ("", "~", "null", "Null", "NULL"):
        return text  # e.g. "#tag", which YAML reads as a comment
    return value


def parse_overrides(overrides: Iterable[str], ctx: _Ctx | None = None) -> dict[str, Any]:
    """Parse ``key.sub=value`` strings into a nested dict; values are YAML (``1e-3``, ``[a,b]``, ``true``)."""
    own = ctx is None
    ctx = ctx or _Ctx()
    out: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            ctx.problems.append(f"override {item!r} is not KEY=VALUE (e.g. train.lr=1e-3)")
            continue
        try:
            value = _parse_value(raw)
        except yaml.YAMLError as exc:
            detail = getattr(exc, "problem", None) or str(exc)
            ctx.problems.append(f"override {item!r}: cannot read the value as YAML ({detail}); quote it")
            continue
        ctx.overrides[key] = item
        node = out
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                ctx.problems.append(f"override {item!r}: '{'.'.join(parts[:depth + 1])}' is set to a value, "
                                    "not a section, by an earlier override")
                break
            node = nxt
        else:
            node[parts[-1]] = value
    if own and ctx.problems:
        raise ConfigError(ctx.problems, source="overrides")
    return out


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge `top` onto `base`: sections merge key by key, anything else is replaced."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = (),
                data: Mapping[str, Any] | None = None) -> T:
    """Build a `cls` instance from YAML at `path`, then `data` on top, then `overrides` on top.

    Raises ConfigError listing every problem (unknown keys with suggestions, wrong types, values
    outside the allowed ones, YAML syntax errors with file and line).
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    ctx = _Ctx()
    merged: dict[str, Any] = {}
    source = str(path) if path is not None else None
    if path is not None:
        raw = _read_yaml(Path(path), ctx)
        if not isinstance(raw, Mapping):
            raise ConfigError([f"the top level must be a mapping of keys to values, got {_show(raw)}"],
                              source=source)
        merged = dict(raw)
    if data is not None:
        merged = _merge(merged, to_dict(dict(data)))  # instances in `data` become plain data first
    merged = _merge(merged, parse_overrides(list(overrides), ctx))
    result = _build(cls, merged, "", ctx)
    if ctx.problems:
        raise ConfigError(ctx.problems, source=source)
    logger.debug("loaded %s from %s with %d override(s)", cls.__name__, source or "defaults", len(ctx.overrides))
    return typing.cast(T, result)


# ----------------------------------------------------------------------------------- writing

def to_dict(instance: Any) -> Any:
    """The config as plain YAML/JSON data: dataclasses → dicts (field order), tuples → lists, paths → str."""
    if dataclasses.is_dataclass(instance) and not isinstance(instance, type):
        return {f.name: to_dict(getattr(instance, f.name)) for f in dataclasses.fields(instance) if f.init}
    if isinstance(instance, enum.Enum):
        return to_dict(instance.value)
    if isinstance(instance, Path):
        return str(instance)
    if isinstance(instance, (list, tuple)):
        return [to_dict(v) for v in instance]
    if isinstance(instance, Mapping):
        return {to_dict(k): to_dict(v) for k, v in instance.items()}
    return instance


def dump_yaml(instance: Any) -> str:
    """The resolved config as YAML text that ``load_config`` reads back to an equal instance."""
    data = to_dict(instance)
    text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False)
    if yaml.load(text, Loader=_Loader) != data:  # noqa: S506 - _Loader is a SafeLoader
        # PyYAML writes some line-break characters (U+0085) raw and reads them back changed;
        # escaped non-ASCII always round-trips.
        text = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=False, default_flow_style=False)
    return text


def save_config(instance: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    return write_text(path, dump_yaml(instance))


def config_hash(instance: Any) -> str:
    """A stable 16-hex-digit hash of the config's content (key order does not matter)."""
    blob = json.dumps(to_dict(instance), sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def describe_config(cls: type, prefix: str = "") -> list[dict[str, Any]]:
    """One row per leaf key: dotted key, type, default and help — for ``--help`` texts and docs."""
    rows: list[dict[str, Any]] = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            rows.extend(describe_config(tp, f"{prefix}{f.name}."))
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = to_dict(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = to_dict(f.default_factory())
        else:
            default = "(required)"
        choices = f.metadata.get("choices")
        rows.append({"key": f"{prefix}{f.name}", "type": _type_name(tp), "default": default,
                     "help": f.metadata.get("help", ""),
                     "choices": list(choices() if callable(choices) else choices) if choices is not None else None})
    return rows
