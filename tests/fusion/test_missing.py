"""Missing-modality protocols: GCNet random masks, fixed conditions, mask schedules."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imer.errors import BadInput
from imer.fusion.missing import (
    CONDITIONS,
    MISSING_RATES,
    MaskSchedule,
    MissingProtocol,
    achieved_missing_rate,
    condition_mask,
    random_missing_mask,
)

N_BIG = 20000


# ---------------------------------------------------------------------- random_missing_mask
@pytest.mark.parametrize("rate", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
def test_achieved_rate_matches_nominal(rate):
    mask = random_missing_mask(N_BIG, rate, np.random.default_rng(0))
    assert mask.shape == (N_BIG, 3) and mask.dtype == bool
    assert achieved_missing_rate(mask) == pytest.approx(rate, abs=0.01)
    # and by the definition: missing pairs / (3 N)
    assert (~mask).sum() / (3 * N_BIG) == pytest.approx(rate, abs=0.01)


def test_rate_07_keeps_exactly_one_modality():
    # keep rate 0.3 <= 1/3: GCNet keeps exactly one modality per utterance -> MR = 2/3, not 0.7.
    mask = random_missing_mask(N_BIG, 0.7, np.random.default_rng(1))
    assert (mask.sum(1) == 1).all()
    assert achieved_missing_rate(mask) == pytest.approx(2 / 3, abs=1e-12)
    # the kept modality is uniform over the three
    share = mask.mean(0)
    assert np.allclose(share, 1 / 3, atol=0.02)


@pytest.mark.parametrize("rate", MISSING_RATES)
def test_every_row_keeps_at_least_one(rate):
    mask = random_missing_mask(5000, rate, np.random.default_rng(2))
    assert mask.any(1).all()


def test_rate_zero_is_all_true():
    mask = random_missing_mask(100, 0.0, np.random.default_rng(0))
    assert mask.shape == (100, 3) and mask.all()


def test_zero_utterances():
    mask = random_missing_mask(0, 0.5, np.random.default_rng(0))
    assert mask.shape == (0, 3)
    assert achieved_missing_rate(mask) == 0.0


def test_deterministic_by_seed():
    a = random_missing_mask(2000, 0.4, np.random.default_rng(123))
    b = random_missing_mask(2000, 0.4, np.random.default_rng(123))
    c = random_missing_mask(2000, 0.4, np.random.default_rng(124))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("rate", MISSING_RATES)
def test_available_guarantees_a_real_stream(rate):
    rng = np.random.default_rng(5)
    n = 3000
    available = rng.random((n, 3)) < 0.5
    available[:100] = False  # rows with nothing at all
    available[100:200] = [False, False, True]  # only video
    mask = random_missing_mask(n, rate, np.random.default_rng(6), available=available)
    assert mask.shape == (n, 3)
    assert mask.any(1).all()
    seen = mask & available
    has_some = available.any(1)
    assert seen[has_some].any(1).all(), "a row with a real stream ended up empty after the AND"
    # rows with only video always keep video
    assert mask[100:200, 2].all()
    if rate >= 0.7:
        # exactly one kept, and it is one of the available ones
        assert (mask.sum(1) == 1).all()
        assert (seen[has_some].sum(1) == 1).all()


def test_available_all_true_reproduces_default():
    n = 1000
    a = random_missing_mask(n, 0.3, np.random.default_rng(9))
    b = random_missing_mask(n, 0.3, np.random.default_rng(9), available=np.ones((n, 3), bool))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, float("nan")])
def test_bad_rate_raises(rate):
    with pytest.raises(BadInput):
        random_missing_mask(10, rate, np.random.default_rng(0))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(min_value=0, max_value=300),
    rate=st.one_of(st.sampled_from(MISSING_RATES), st.floats(min_value=0.0, max_value=0.99)),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    with_available=st.booleans(),
)
def test_property_shape_and_at_least_one_kept(n, rate, seed, with_available):
    rng = np.random.default_rng(seed)
    available = rng.random((n, 3)) < 0.6 if with_available else None
    mask = random_missing_mask(n, rate, rng, available=available, max_tries=20)
    assert mask.shape == (n, 3)
    assert mask.dtype == bool
    assert mask.any(1).all()
    if available is not None:
        has_some = available.any(1)
        assert (mask & available)[has_some].any(1).all()
    if 1.0 - rate <= 1.0 / 3:
        assert (mask.sum(1) == 1).all()


# ---------------------------------------------------------------------- condition_mask
EXPECTED_CONDITIONS = {
    "a": (True, False, False),
    "t": (False, True, False),
    "v": (False, False, True),
    "at": (True, True, False),
    "av": (True, False, True),
    "tv": (False, True, True),
    "atv": (True, True, True),
}


def test_seven_conditions():
    assert set(CONDITIONS) == set(EXPECTED_CONDITIONS)


@pytest.mark.parametrize("cond", CONDITIONS)
def test_condition_mask(cond):
    mask = condition_mask(7, cond)
    assert mask.shape == (7, 3) and mask.dtype == bool
    assert (mask == np.array(EXPECTED_CONDITIONS[cond])).all()


def test_condition_letter_order_and_case():
    np.testing.assert_array_equal(condition_mask(3, "VA"), condition_mask(3, "av"))


@pytest.mark.parametrize("cond", ["x", "", "ax", "audio"])
def test_bad_condition_raises(cond):
    with pytest.raises(BadInput):
        condition_mask(5, cond)


# ---------------------------------------------------------------------- MissingProtocol
def test_protocol_names():
    assert MissingProtocol(missing_rate=0.3).name == "mr0.3"
    assert MissingProtocol(missing_rate=0.0).name == "mr0.0"
    assert MissingProtocol(condition="at").name == "cond-at"


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"missing_rate": 0.3, "condition": "a"},
        {"condition": "x"},
        {"condition": ""},
        {"missing_rate": 1.0},
        {"missing_rate": -0.1},
    ],
)
def test_protocol_validation(kwargs):
    with pytest.raises(BadInput):
        MissingProtocol(**kwargs)


def test_protocol_draw():
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(MissingProtocol(condition="tv").draw(4, rng), condition_mask(4, "tv"))
    m = MissingProtocol(missing_rate=0.5).draw(3000, rng)
    assert achieved_missing_rate(m) == pytest.approx(0.5, abs=0.01)


# ---------------------------------------------------------------------- MaskSchedule
def test_eval_mask_is_stable():
    p = MissingProtocol(missing_rate=0.5)
    s = MaskSchedule(p, seed=3)
    a = s.eval_mask(500)
    np.testing.assert_array_equal(a, s.eval_mask(500))
    np.testing.assert_array_equal(a, MaskSchedule(p, seed=3).eval_mask(500))
    assert not np.array_equal(a, MaskSchedule(p, seed=4).eval_mask(500))
    assert a.any(1).all()


def test_train_mask_changes_per_epoch_but_reproducible():
    s = MaskSchedule(MissingProtocol(missing_rate=0.4), seed=0)
    e0, e1 = s.train_mask(500, 0), s.train_mask(500, 1)
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(e1, MaskSchedule(MissingProtocol(missing_rate=0.4), seed=0).train_mask(500, 1))
    assert not np.array_equal(e0, s.eval_mask(500))


def test_schedule_with_condition_and_available():
    avail = np.ones((50, 3), bool)
    avail[:10] = [False, True, False]
    s = MaskSchedule(MissingProtocol(condition="av"), seed=0, available=avail)
    np.testing.assert_array_equal(s.eval_mask(50), condition_mask(50, "av"))
    s2 = MaskSchedule(MissingProtocol(missing_rate=0.7), seed=0, available=avail)
    m = s2.eval_mask(50)
    assert m[:10, 1].all() and (m.sum(1) == 1).all()


# ---------------------------------------------------------------------- mixed rates (training default)
def test_mixed_protocol_deals_rows_to_every_rate():
    from imer.fusion.missing import MISSING_RATES, MaskSchedule, MissingProtocol, mixed_missing_mask

    n = 16_000
    mask = mixed_missing_mask(n, MISSING_RATES, np.random.default_rng(0))
    assert mask.shape == (n, 3) and mask.any(1).all()  # every utterance keeps a modality
    # GCNet's MR 0.7 achieves 2/3: the mixture's achieved rate is the mean of the achieved rates.
    expected = (sum(MISSING_RATES[:-1]) + 2 / 3) / len(MISSING_RATES)
    assert abs((1 - mask.mean()) - expected) < 0.01
    complete = mask.all(1).mean()
    assert 0.2 < complete < 0.5  # the MR 0.0 share plus the low rates' complete rows
    assert (mask.sum(1) == 1).mean() > 1 / len(MISSING_RATES)  # the MR 0.7 share keeps one each
    proto = MissingProtocol(mixture=MISSING_RATES)
    assert proto.name == "mixed0.0-0.7"
    sched = MaskSchedule(proto, seed=3)
    np.testing.assert_array_equal(sched.eval_mask(500), sched.eval_mask(500))  # fixed for selection
    assert not np.array_equal(sched.train_mask(500, 0), sched.train_mask(500, 1))  # redrawn per epoch
    avail = np.ones((500, 3), bool)
    avail[:, 2] = False  # no video anywhere: the kept modality is drawn among the others
    assert mixed_missing_mask(500, MISSING_RATES, np.random.default_rng(1), avail)[:, :2].any(1).all()


def test_mixed_protocol_is_the_training_default_and_flags_override_it():
    from imer.fusion.train_config import TrainConfig

    assert TrainConfig().protocol().mixture is not None
    assert TrainConfig(missing_rate=0.3).protocol().name == "mr0.3"
    assert TrainConfig(condition="at").protocol().name == "cond-at"
    with pytest.raises(BadInput, match="exactly one"):
        from imer.fusion.missing import MissingProtocol

        MissingProtocol(missing_rate=0.1, mixture=(0.0,))
