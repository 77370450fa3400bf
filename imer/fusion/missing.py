"""Missing-modality protocols: which (utterance, modality) pairs a model may see.

Every protocol returns a bool ``[N, 3]`` mask in (audio, text, video) order, which the trainer
AND-s with the data's own ``present`` mask: a stream that is really missing stays missing.

* :func:`random_missing_mask` — the community "missing rate" (GCNet, MoMKE, ComP):
  ``MR = missing pairs / (3 N)``, every utterance keeps at least one modality.
* :func:`condition_mask` — the fixed protocol: one of the seven non-empty subsets of {a, t, v}.
* :func:`mixed_missing_mask` — every utterance under a rate drawn from a set (training default).
* :class:`MaskSchedule` — fixed masks per seed for evaluation, fresh ones per epoch for training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imer.errors import BadInput
from imer.types import parse_modalities

NUM_MODALITIES = 3
MISSING_RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
CONDITIONS = ("a", "t", "v", "at", "av", "tv", "atv")


def random_missing_mask(
    n: int,
    missing_rate: float,
    rng: np.random.Generator,
    available: np.ndarray | None = None,
    tolerance: float = 0.005,
    max_tries: int = 200,
) -> np.ndarray:
    """GCNet's random missing mask (``random_mask`` in its code), on a numpy Generator.

    Algorithm, as in GCNet: with keep rate ``k = 1 - MR``,

    * if ``k <= 1/3``: every utterance keeps exactly one modality, uniform at random — so a
      nominal MR of 0.7 achieves 2/3 (GCNet does the same; report the achieved rate);
    * else: one kept modality per utterance is drawn, then extra modalities are kept i.i.d.
      with the probability that makes the expected keep rate ``k``; redraw until the achieved
      rate is within ``tolerance`` (GCNet: 0.005).

    Differences from GCNet's code: probabilities are continuous (GCNet quantises them to whole
    percent, ``randint(0, 100) < int(ratio * 100)``), and after ``max_tries`` the closest draw is
    kept instead of looping forever (tiny N can make 0.005 unreachable).

    Args:
        available: optional bool ``[n, 3]`` of really-present streams. The guaranteed modality
            is drawn among them, so the AND with the data mask cannot leave an utterance empty
            when it had something to show. All-True reproduces GCNet exactly.
    """
    if not 0.0 <= missing_rate < 1.0:
        raise BadInput(f"missing rate {missing_rate}: must be in [0, 1)")
    m = NUM_MODALITIES
    if available is None:
        available = np.ones((n, m), dtype=bool)
    available = np.asarray(available, dtype=bool)
    keep_rate = 1.0 - missing_rate
    if n == 0:
        return np.zeros((0, m), dtype=bool)
    if missing_rate == 0.0:
        return np.ones((n, m), dtype=bool)

    def one_per_row() -> np.ndarray:
        # Uniform choice among available modalities (all three when none is available).
        weights = np.where(available.any(1, keepdims=True), available, True).astype(float)
        weights /= weights.sum(1, keepdims=True)
        choice = (rng.random((n, 1)) > np.cumsum(weights, 1)).sum(1)
        out = np.zeros((n, m), dtype=bool)
        out[np.arange(n), np.minimum(choice, m - 1)] = True
        return out

    if keep_rate <= 1.0 / m:
        return one_per_row()
    # Expected keep rate = 1/m + (1 - 1/m) * p  =>  p = (k - 1/m) / (1 - 1/m)
    p = (keep_rate - 1.0 / m) / (1.0 - 1.0 / m)
    best, best_err = None, np.inf
    for _ in range(max_tries):
        mask = one_per_row() | (rng.random((n, m)) < p)
        err = abs(mask.mean() - keep_rate)
        if err < best_err:
            best, best_err = mask, err
        if err < tolerance:
            break
    return best


def condition_mask(n: int, condition: str) -> np.ndarray:
    """Fixed protocol: ``'at'`` keeps audio and text for every utterance."""
    keep = parse_modalities(condition)
    return np.tile(np.array(keep, dtype=bool), (n, 1))


def achieved_missing_rate(mask: np.ndarray) -> float:
    """Fraction of (utterance, modality) pairs that are missing."""
    return float(1.0 - np.asarray(mask, dtype=bool).mean()) if mask.size else 0.0


def mixed_missing_mask(
    n: int, rates: tuple[float, ...], rng: np.random.Generator, available: np.ndarray | None = None
) -> np.ndarray:
    """Each utterance's pattern drawn under a rate picked uniformly from ``rates``.

    The rows are dealt to the rates at random (equal shares, up to rounding) and each share gets
    GCNet's mask at its rate, so the result mixes complete utterances with every degree of
    missingness: what a model meant for ``predict`` (any pattern, any clip) should train on.
    """
    if not rates:
        raise BadInput("a mixed missing protocol needs at least one rate")
    available = np.ones((n, NUM_MODALITIES), dtype=bool) if available is None else np.asarray(available, dtype=bool)
    share = rng.permutation(n) % len(rates)  # row -> index of its rate
    out = np.ones((n, NUM_MODALITIES), dtype=bool)
    for k, rate in enumerate(rates):
        rows = np.flatnonzero(share == k)
        if rows.size:
            out[rows] = random_missing_mask(rows.size, float(rate), rng, available[rows])
    return out


@dataclass(frozen=True)
class MissingProtocol:
    """What a training run or an evaluation row applies: a rate, a fixed condition, or a mixture
    of rates (each utterance under one of them; the training default)."""

    missing_rate: float | None = None
    condition: str | None = None
    mixture: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        given = sum(x is not None for x in (self.missing_rate, self.condition, self.mixture))
        if given != 1:
            raise BadInput("give exactly one of a missing rate, a condition or a mixture of rates")
        if self.condition is not None:
            parse_modalities(self.condition)
        for r in (self.missing_rate,) if self.missing_rate is not None else tuple(self.mixture or ()):
            if not 0.0 <= r < 1.0:
                raise BadInput(f"missing rate {r}: must be in [0, 1)")
        if self.mixture is not None and not self.mixture:
            raise BadInput("a mixture needs at least one missing rate")

    @property
    def name(self) -> str:
        if self.mixture is not None:
            return f"mixed{min(self.mixture):.1f}-{max(self.mixture):.1f}"
        return f"mr{self.missing_rate:.1f}" if self.condition is None else f"cond-{self.condition}"

    def draw(self, n: int, rng: np.random.Generator, available: np.ndarray | None = None) -> np.ndarray:
        if self.condition is not None:
            return condition_mask(n, self.condition)
        if self.mixture is not None:
            return mixed_missing_mask(n, self.mixture, rng, available)
        return random_missing_mask(n, float(self.missing_rate), rng, available)


class MaskSchedule:
    """Evaluation masks fixed by (seed, protocol); training masks re-drawn every epoch.

    The evaluation mask for a given seed never changes between epochs or runs, so model
    selection and the reported table compare like with like. Training redraws per epoch
    (the official ComP/MoMKE code redraws per batch; per epoch keeps runs reproducible
    and cheap — the difference is noted in the trainer).
    """

    def __init__(self, protocol: MissingProtocol, seed: int, available: np.ndarray | None = None):
        self.protocol = protocol
        self.seed = seed
        self.available = available

    def eval_mask(self, n: int) -> np.ndarray:
        tag = int(round((self.protocol.missing_rate or 0.0) * 1000)) + (100_000 if self.protocol.mixture else 0)
        rng = np.random.default_rng([self.seed, 7919, tag])
        return self.protocol.draw(n, rng, self.available)

    def train_mask(self, n: int, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 104729, epoch])
        return self.protocol.draw(n, rng, self.available)
