"""One way from plain data (JSON, ``--set``, ``--config``) to config dataclasses, and back.

Method configs, extractor configs, ``TrainConfig``, decode settings, feature specs and bundle
specs all go through :func:`from_dict`, so every one of them refuses unknown keys (listing the
valid ones), checks types and ``Literal`` choices, and turns JSON lists back into tuples. A typo
or ``use_gm=no`` fails loudly instead of silently leaving a switch on. No ``exec``, no ``eval``.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

from imer.errors import BadInput

T = TypeVar("T")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    return getattr(hint, "__name__", str(hint).replace("typing.", ""))


def coerce(value: Any, hint: Any, where: str) -> Any:
    """Check (and gently convert) ``value`` against the type ``hint``; ``where`` names it in errors."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any or hint is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return coerce(value, a, where)
            except BadInput as e:
                errors.append(e)
        raise BadInput(f"{where} must be {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    bad = BadInput(f"{where} must be {_type_name(hint)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise BadInput(f"{where} must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return from_dict(hint, value, where)
        raise bad
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise BadInput(f"{where} must be one of {', '.join(repr(e.value) for e in hint)}, got {value!r}") from None
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, str)) and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
        raise bad
    if hint is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            return int(value)
        raise bad
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    if hint is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise bad
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise BadInput(f"{where} must have {len(args)} values, got {len(value)}: {value!r}")
        return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list or hint is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        return [coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise bad
        if len(args) == 2:
            return {coerce(k, args[0], where): coerce(v, args[1], f"{where}[{k!r}]") for k, v in value.items()}
        return dict(value)
    return value


def from_dict(cls: type[T], data: dict | None, what: str | None = None) -> T:
    """Build the dataclass ``cls`` from plain data.

    Unknown keys are refused with the valid list; values are type-checked and coerced
    (``"no"`` -> False for a bool, ``[1, 2]`` -> ``(1, 2)`` for a tuple, a dict -> a nested
    dataclass); missing keys take the dataclass defaults.
    """
    what = what or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BadInput(f"{what}: expected an object of options, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise BadInput(f"{what}: unknown option(s) {unknown}; valid: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {k: coerce(v, hints.get(k, Any), f"{what}: option {k}") for k, v in data.items()}
    return cls(**values)


def to_dict(obj: Any) -> dict:
    """A dataclass as JSON-ready data: tuples become lists, enums their values, paths strings."""
    return json.loads(json.dumps(dataclasses.asdict(obj), default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, enum.Enum):
        return o.value
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy scalars
        return o.item()
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    return str(o)


def default(cls: type, name: str) -> Any:
    """The default of one dataclass field, so CLI signatures never restate it."""
    f = next((f for f in dataclasses.fields(cls) if f.name == name), None)
    if f is None:
        raise KeyError(f"{cls.__name__} has no field {name!r}")
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    raise KeyError(f"{cls.__name__}.{name} has no default")


def parse_value(text: str) -> Any:
    """``--set`` values are JSON where they parse as JSON (numbers, lists, true/false/null), else strings."""
    low = text.strip().lower()
    try:
        return json.loads(low if low in ("true", "false", "null") else text)
    except json.JSONDecodeError:
        return text


def parse_set(
    pairs: list[str], scopes: list[str] | None = None, scope: str | None = None, label: str = "NAME"
) -> dict[str, Any]:
    """Parse repeated ``--set`` items into nested option dicts.

    * ``scopes`` given (extractors: ``--set wav2vec2.layers=[-1]``): the first dotted part must be
      one of ``scopes``; the result is ``{scope: {key: value}}``.
    * ``scope`` given (one method: ``--set momentum=0.3`` or ``--set comp.momentum=0.3``): an
      optional leading ``scope.`` is accepted and must match; the result is ``{key: value}``.
      A nested option then needs the prefix (``comp.inner.size=5``), since ``inner.size`` would
      read as an option for another method ``inner``.

    A dotted key beyond that (``face.detect_side=640``) becomes a nested dict.
    """
    out: dict[str, Any] = {}
    for item in pairs:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise BadInput(f"--set {item!r}: use {label + '.KEY=VALUE' if scopes is not None else 'KEY=VALUE'}")
        parts = key.split(".")
        target = out
        if scopes is not None:
            if len(parts) < 2 or not all(parts):
                raise BadInput(f"--set {item!r}: use {label}.KEY=VALUE with {label} one of {', '.join(scopes)}")
            if parts[0] not in scopes:
                raise BadInput(f"--set {item!r}: no {label.lower()} {parts[0]!r}; choose one of {', '.join(scopes)}")
        elif scope is not None and len(parts) > 1 and parts[0] == scope:
            parts = parts[1:]
        elif scope is not None and len(parts) > 1:
            raise BadInput(f"--set {item!r} is for {parts[0]!r}, but this run is {scope!r}")
        for p in parts[:-1]:
            nxt = target.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise BadInput(f"--set {item!r}: {p!r} was already given a value")
            target = nxt
        target[parts[-1]] = parse_value(value)
    return out


def merge(base: dict, override: dict) -> dict:
    """Nested dict update: ``override`` wins, sub-dicts are merged rather than replaced."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_options_file(path: Path | None, what: str = "--config") -> dict:
    """Options from a JSON file (an object of option: value)."""
    if path is None:
        return {}
    try:
        options = json.loads(Path(path).read_text())
    except OSError as e:
        raise BadInput(f"{what} {path}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise BadInput(f"{what} {path}: not valid JSON ({e})") from None
    if not isinstance(options, dict):
        raise BadInput(f"{what} {path}: must be a JSON object of options, e.g. {{\"momentum\": 0.3}}")
    return options
