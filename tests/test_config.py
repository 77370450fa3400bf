"""imer/config.py: one way from plain data (JSON, --set, --config) to config dataclasses, and back."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from imer.config import default, from_dict, merge, parse_set, read_options_file, to_dict
from imer.errors import BadInput


@dataclass
class Inner:
    size: int = 3
    scale: float = 1.0


@dataclass
class Opts:
    flag: bool = False
    count: int = 1
    rate: float = 0.5
    name: str = "x"
    mode: Literal["fast", "slow"] = "fast"
    layers: tuple[int, ...] = (-1,)
    pair: tuple[int, str] = (0, "a")
    inner: Inner = field(default_factory=Inner)
    maybe: Optional[int] = None
    newer: int | None = 4
    weights: dict[str, float] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    where: Path = Path("runs")


# ---------------------------------------------------------------------- from_dict
def test_defaults_when_nothing_given():
    assert from_dict(Opts, {}) == Opts()
    assert from_dict(Opts, None) == Opts()


def test_unknown_keys_refused_listing_the_valid_ones():
    with pytest.raises(BadInput) as e:
        from_dict(Opts, {"flag": True, "colour": 1, "speed": 2})
    msg = str(e.value)
    assert "Opts: unknown option(s) ['colour', 'speed']" in msg
    assert "valid: " + str(sorted(f.name for f in dataclasses.fields(Opts))) in msg


def test_what_names_the_config_in_errors():
    with pytest.raises(BadInput, match=r"^method 'x': unknown option\(s\) \['nope'\]"):
        from_dict(Opts, {"nope": 1}, "method 'x'")
    with pytest.raises(BadInput, match=r"Opts: expected an object of options, got list"):
        from_dict(Opts, [1, 2])


@pytest.mark.parametrize(
    "value, expect",
    [("no", False), ("yes", True), ("0", False), ("1", True), ("False", False), ("TRUE", True), (" on ", True),
     ("off", False), (0, False), (1, True), (True, True), (False, False)],
)
def test_bool_coercion(value, expect):
    out = from_dict(Opts, {"flag": value})
    assert out.flag is expect


@pytest.mark.parametrize("value", ["maybe", "", 2, 0.0, None, [True]])
def test_bool_refuses_anything_else(value):
    with pytest.raises(BadInput, match=r"Opts: option flag must be bool"):
        from_dict(Opts, {"flag": value})


def test_int_checks():
    assert from_dict(Opts, {"count": 7}).count == 7
    got = from_dict(Opts, {"count": 2.0}).count  # a whole float (JSON 2.0) is fine
    assert got == 2 and type(got) is int
    with pytest.raises(BadInput, match=r"option count must be int, got 1\.5"):
        from_dict(Opts, {"count": 1.5})
    with pytest.raises(BadInput, match=r"option count must be int, got True"):
        from_dict(Opts, {"count": True})
    with pytest.raises(BadInput, match="option count must be int"):
        from_dict(Opts, {"count": "3"})


def test_float_checks():
    got = from_dict(Opts, {"rate": 3}).rate
    assert got == 3.0 and type(got) is float
    with pytest.raises(BadInput, match="option rate must be float, got True"):
        from_dict(Opts, {"rate": True})
    with pytest.raises(BadInput, match="option rate must be float, got '0.3x'"):
        from_dict(Opts, {"rate": "0.3x"})


def test_str_and_path():
    assert from_dict(Opts, {"name": "y"}).name == "y"
    with pytest.raises(BadInput, match="option name must be str, got 5"):
        from_dict(Opts, {"name": 5})
    assert from_dict(Opts, {"where": "a/b"}).where == Path("a/b")


def test_literal_choices_checked():
    assert from_dict(Opts, {"mode": "slow"}).mode == "slow"
    with pytest.raises(BadInput, match=r"option mode must be one of 'fast', 'slow', got 'medium'"):
        from_dict(Opts, {"mode": "medium"})


def test_json_lists_become_tuples():
    out = from_dict(Opts, json.loads('{"layers": [-1, -2, 3]}'))
    assert out.layers == (-1, -2, 3) and type(out.layers) is tuple
    assert from_dict(Opts, {"layers": [2.0]}).layers == (2,)  # elements coerced too
    assert from_dict(Opts, {"layers": []}).layers == ()
    with pytest.raises(BadInput, match=r"option layers\[1\] must be int, got 'x'"):
        from_dict(Opts, {"layers": [1, "x"]})
    with pytest.raises(BadInput, match="option layers must be"):
        from_dict(Opts, {"layers": 3})
    # fixed length: the length is checked
    with pytest.raises(BadInput, match=r"option pair must have 2 values, got 3: \[1, 'a', 2\]"):
        from_dict(Opts, {"pair": [1, "a", 2]})
    with pytest.raises(BadInput, match=r"option pair must have 2 values, got 1: \[1\]"):
        from_dict(Opts, {"pair": [1]})


# imer/config.py coerce(): ``zip(args, value)`` unpacked as ``(v, a)`` swaps value and type, so a
# fixed-length tuple comes back as its element *types* and elements are never checked.


def test_fixed_length_tuple_values_are_coerced():
    out = from_dict(Opts, json.loads('{"pair": [5, "b"]}'))
    assert out.pair == (5, "b") and type(out.pair) is tuple
    assert from_dict(Opts, {"pair": [5.0, "b"]}).pair == (5, "b")
    with pytest.raises(BadInput, match=r"option pair\[1\] must be str, got 2"):
        from_dict(Opts, {"pair": [1, 2]})


def test_list_values_coerced():
    assert from_dict(Opts, {"tags": ("a", "b")}).tags == ["a", "b"]
    with pytest.raises(BadInput, match=r"option tags\[0\] must be str"):
        from_dict(Opts, {"tags": [1]})


def test_nested_dataclass_from_a_dict():
    out = from_dict(Opts, {"inner": {"size": 5, "scale": 2}})
    assert out.inner == Inner(size=5, scale=2.0) and type(out.inner.scale) is float
    assert from_dict(Opts, {"inner": Inner(7)}).inner == Inner(7)
    with pytest.raises(BadInput, match=r"unknown option\(s\) \['sise'\]; valid: \['scale', 'size'\]"):
        from_dict(Opts, {"inner": {"sise": 5}})
    with pytest.raises(BadInput, match="option inner"):
        from_dict(Opts, {"inner": 5})


def test_optional():
    assert from_dict(Opts, {"maybe": None}).maybe is None
    assert from_dict(Opts, {"maybe": 3}).maybe == 3
    assert from_dict(Opts, {"newer": None}).newer is None
    assert from_dict(Opts, {"newer": 8.0}).newer == 8
    with pytest.raises(BadInput, match="option maybe must be int or NoneType, got 'three'"):
        from_dict(Opts, {"maybe": "three"})
    with pytest.raises(BadInput, match="option newer must be"):
        from_dict(Opts, {"newer": 1.5})


def test_dict_values_coerced():
    out = from_dict(Opts, {"weights": {"a": 1, "b": 2.5}})
    assert out.weights == {"a": 1.0, "b": 2.5} and all(type(v) is float for v in out.weights.values())
    with pytest.raises(BadInput, match=r"option weights\['a'\] must be float, got 'heavy'"):
        from_dict(Opts, {"weights": {"a": "heavy"}})
    with pytest.raises(BadInput, match="option weights must be"):
        from_dict(Opts, {"weights": [1, 2]})


def test_to_dict_round_trip():
    src = Opts(flag=True, layers=(1, 2), inner=Inner(9, 0.5), maybe=2, weights={"q": 1.5}, tags=["t"], where=Path("p/q"))
    plain = to_dict(src)
    assert plain["layers"] == [1, 2] and plain["inner"] == {"size": 9, "scale": 0.5} and plain["where"] == "p/q"
    assert plain["pair"] == [0, "a"]
    json.dumps(plain)  # JSON-ready
    plain.pop("pair")  # fixed-length tuples: see test_to_dict_round_trip_fixed_tuple
    assert from_dict(Opts, plain) == src


def test_to_dict_round_trip_fixed_tuple():
    src = Opts(pair=(3, "z"))
    assert from_dict(Opts, to_dict(src)) == src


# ---------------------------------------------------------------------- parse_set
def test_parse_set_with_scope():
    got = parse_set(["use_gm=no", "comp.momentum=0.5", "layers=[-1, -2]", "name=hello", "flag=TRUE", "x=null"], scope="comp")
    assert got == {"use_gm": "no", "momentum": 0.5, "layers": [-1, -2], "name": "hello", "flag": True, "x": None}
    with pytest.raises(BadInput, match=r"--set 'concat.hidden=64' is for 'concat', but this run is 'comp'"):
        parse_set(["concat.hidden=64"], scope="comp")


def test_parse_set_with_scopes():
    scopes = ["faceprint", "face", "wav2vec2"]
    got = parse_set(["faceprint.orientations=8", "face.detect_side=640", "face.crop.margin=0.2", "wav2vec2.layers=[-1]"], scopes=scopes, label="BACKEND")
    assert got == {
        "faceprint": {"orientations": 8},
        "face": {"detect_side": 640, "crop": {"margin": 0.2}},
        "wav2vec2": {"layers": [-1]},
    }
    with pytest.raises(BadInput, match=r"no backend 'facepront'; choose one of faceprint, face, wav2vec2"):
        parse_set(["facepront.orientations=8"], scopes=scopes, label="BACKEND")
    with pytest.raises(BadInput, match=r"use BACKEND\.KEY=VALUE with BACKEND one of faceprint, face, wav2vec2"):
        parse_set(["orientations=8"], scopes=scopes, label="BACKEND")


def test_parse_set_nested_keys():
    # no scope: a dotted key nests
    assert parse_set(["face.detect_side=640", "face.crop=1"]) == {"face": {"detect_side": 640, "crop": 1}}
    # with a scope, the dotted rest of a scoped key nests ...
    assert parse_set(["comp.inner.size=5", "comp.inner.scale=2"], scope="comp") == {"inner": {"size": 5, "scale": 2}}
    # ... and any other first part is a foreign prefix
    with pytest.raises(BadInput, match=r"--set 'face.detect_side=640' is for 'face', but this run is 'comp'"):
        parse_set(["face.detect_side=640"], scope="comp")


@pytest.mark.parametrize("item", ["momentum", "=3", "momentum 0.3"])
def test_parse_set_missing_equals(item):
    with pytest.raises(BadInput, match=r"use KEY=VALUE"):
        parse_set([item], scope="comp")
    with pytest.raises(BadInput, match=r"use NAME\.KEY=VALUE"):
        parse_set([item], scopes=["comp"])


def test_parse_set_value_then_nested_is_refused():
    with pytest.raises(BadInput, match="'face' was already given a value"):
        parse_set(["face=1", "face.detect_side=640"])


def test_merge_is_nested():
    assert merge({"a": 1, "b": {"x": 1, "y": 2}}, {"b": {"y": 3}, "c": 4}) == {"a": 1, "b": {"x": 1, "y": 3}, "c": 4}


# ---------------------------------------------------------------------- default / read_options_file
def test_default_of_plain_and_factory_fields():
    assert default(Opts, "count") == 1
    assert default(Opts, "mode") == "fast"
    assert default(Opts, "inner") == Inner()
    a, b = default(Opts, "weights"), default(Opts, "weights")
    assert a == {} and a is not b  # a fresh value from the factory each time
    with pytest.raises(KeyError, match="no field 'nope'"):
        default(Opts, "nope")

    @dataclass
    class Required:
        needed: int

    with pytest.raises(KeyError, match="has no default"):
        default(Required, "needed")


def test_read_options_file(tmp_path):
    assert read_options_file(None) == {}
    good = tmp_path / "good.json"
    good.write_text('{"momentum": 0.3, "use_gm": false}')
    assert read_options_file(good) == {"momentum": 0.3, "use_gm": False}
    with pytest.raises(BadInput, match=r"--config .*absent\.json: cannot read it"):
        read_options_file(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{momentum: 0.3")
    with pytest.raises(BadInput, match=r"--config .*bad\.json: not valid JSON"):
        read_options_file(bad)
    arr = tmp_path / "arr.json"
    arr.write_text("[1, 2]")
    with pytest.raises(BadInput, match=r"--opts .*arr\.json: must be a JSON object of options"):
        read_options_file(arr, what="--opts")


# ---------------------------------------------------------------------- every registered method config
def _method_names():
    from imer.fusion.base import METHODS

    return METHODS.names()


@pytest.mark.parametrize("name", _method_names())
def test_method_config_round_trips(name):
    from imer.fusion.base import METHODS

    cls = METHODS.get(name).config_class
    tiny = cls.tiny()
    back = from_dict(cls, to_dict(tiny))
    assert back == tiny and type(back) is cls
    assert from_dict(cls, json.loads(json.dumps(to_dict(cls())))) == cls()
