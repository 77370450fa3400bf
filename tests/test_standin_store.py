"""The IEMOCAP-structured stand-in store keeps train, validation and test sources apart.

Selection is only as good as its validation split: if validation utterances reuse the RAVDESS
recordings or FER2013 faces that training utterances stand in with, selection rewards
memorising them. These checks read only file lists (no features are computed).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def _builder():
    spec = importlib.util.spec_from_file_location("_bench_standin_pools", REPO_ROOT / "benchmarks" / "build_iemocap_standin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_valid_and_test_draw_from_disjoint_sources(shared_data):
    b = _builder()
    a = b.ravdess_pools(shared_data / "ravdess-speech")
    v = b.fer_pools(shared_data / "fer2013")
    for pools in (a, v):
        for label in b.RAVDESS_EMOTIONS:
            sides = {side: set(pools[(side, label)]) for side in ("train", "valid", "test")}
            assert all(sides.values()), f"an empty {label} pool"
            assert not sides["train"] & sides["valid"]
            assert not sides["train"] & sides["test"]
            assert not sides["valid"] & sides["test"]
    actor = lambda p: int(p.rsplit("-", 1)[-1].split(".")[0])  # noqa: E731  (03-01-EE-II-SS-RR-AA.flac)
    for label in b.RAVDESS_EMOTIONS:
        assert {actor(p) for p in a[("valid", label)]} <= set(b.VALID_ACTORS)
        assert {actor(p) for p in a[("train", label)]} <= set(b.TRAIN_ACTORS)


def test_draw_gives_each_row_a_file_of_its_group():
    b = _builder()
    groups = {("train", "sad"): [0, 2], ("valid", "sad"): [1]}
    pools = {("train", "sad"): ["t1", "t2"], ("valid", "sad"): ["v1"]}
    got = b.draw(groups, pools, np.random.default_rng(0), 4, replace=False)
    assert got[1] == "v1" and {got[0], got[2]} == {"t1", "t2"} and got[3] == ""
    # Redrawing some rows into an earlier draw leaves the other rows' files alone.
    again = b.draw({("valid", "sad"): [0]}, pools, np.random.default_rng(1), 4, replace=True, chosen=list(got))
    assert again[0] == "v1" and again[1:] == got[1:]
