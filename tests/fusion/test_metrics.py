"""Metrics with the community's conventions, checked against hand-computed values."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from imer.fusion.metrics import (
    classification_metrics,
    compute_metrics,
    headline_metrics,
    primary_metric,
    regression_metrics,
)
from imer.types import TaskKind, TaskSpec

CLS = TaskSpec(TaskKind.CLASSIFICATION, ("happy", "sad", "neutral", "angry"))
REG = TaskSpec(TaskKind.REGRESSION, ("sentiment",))

# ---------------------------------------------------------------------- classification
# y_true = [0, 0, 0, 1, 2, 2]   (class 3 never occurs in y_true)
# y_pred = [0, 0, 1, 1, 2, 3]
#   WA = 4 correct / 6                                  = 0.666667
#   recall: c0 = 2/3, c1 = 1/1, c2 = 1/2   (c3 absent: not averaged)
#   UA = (2/3 + 1 + 1/2) / 3 = 13/18                    = 0.722222
#   F1 per class:
#     c0: pred {0,1}  P=2/2 R=2/3 -> F1 = 2*(1*2/3)/(1+2/3) = 0.8   support 3
#     c1: pred {2,3}  P=1/2 R=1   -> F1 = 2/3                       support 1
#     c2: pred {4}    P=1   R=1/2 -> F1 = 2/3                       support 2
#     c3: support 0 -> weight 0
#   weighted F1 = (3*0.8 + 1*2/3 + 2*2/3) / 6 = 4.4/6    = 0.733333
#   (macro over c0..c2 would be 0.7111: the test tells weighted from macro)
Y_TRUE = np.array([0, 0, 0, 1, 2, 2])
Y_PRED = np.array([0, 0, 1, 1, 2, 3])


def test_classification_hand_case():
    m = classification_metrics(Y_TRUE, Y_PRED, num_classes=4)
    assert m["WA"] == pytest.approx(4 / 6)
    assert m["UA"] == pytest.approx(13 / 18)
    assert m["F1"] == pytest.approx(4.4 / 6)
    assert m["n"] == 6


def test_ua_is_sklearn_balanced_accuracy():
    m = classification_metrics(Y_TRUE, Y_PRED, num_classes=4)
    with warnings.catch_warnings():  # sklearn may warn that y_pred has a class absent from y_true
        warnings.simplefilter("ignore")
        ref = balanced_accuracy_score(Y_TRUE, Y_PRED)
    assert m["UA"] == pytest.approx(ref)
    rng = np.random.default_rng(0)
    for _ in range(20):
        t = rng.integers(0, 4, 50)
        p = np.where(rng.random(50) < 0.6, t, rng.integers(0, 4, 50))
        p = np.where(np.isin(p, t), p, t)  # keep predictions among y_true's classes (no sklearn warning)
        assert classification_metrics(t, p, 4)["UA"] == pytest.approx(balanced_accuracy_score(t, p))


def test_classification_perfect_and_empty():
    m = classification_metrics(np.array([0, 1, 2, 3]), np.array([0, 1, 2, 3]), 4)
    assert m["WA"] == m["UA"] == m["F1"] == 1.0
    e = classification_metrics(np.array([], int), np.array([], int), 4)
    assert e["n"] == 0 and math.isnan(e["WA"]) and math.isnan(e["UA"]) and math.isnan(e["F1"])


# ---------------------------------------------------------------------- regression
# index:    0     1     2     3     4     5
# y_true: [0.0,  1.5, -2.0,  0.0,  2.6, -0.4]
# y_pred: [0.4,  0.0, -1.0, -0.2,  3.5,  0.3]
# Non-zero subset (label 0 dropped): indices 1, 2, 4, 5
#   true > 0: [T, F, T, F];  pred > 0: [F (exactly 0 -> negative), F, T, T]
#   Acc2 = 2/4 = 0.5        (counting pred 0 as positive would give 0.75)
#   F1 weighted: class T: pred T={4,5} P=1/2 R=1/2 -> 0.5; class F: pred F={1,2} P=1/2 R=1/2 -> 0.5
#                -> 0.5
#   MAE  = (1.5 + 1.0 + 0.9 + 0.7) / 4 = 1.025
#   Corr : t=[1.5,-2,2.6,-0.4] mean .425, p=[0,-1,3.5,.3] mean .7
#          dt=[1.075,-2.425,2.175,-.825], dp=[-.7,-1.7,2.8,-.4]
#          sum dt*dp = -.7525+4.1225+6.09+.33 = 9.79
#          sum dt^2 = 12.4475, sum dp^2 = 11.38 -> 9.79/sqrt(141.65255) = 0.822565
# All utterances:
#   Acc2_has0: true>=0 [T,T,F,T,T,F], pred>=0 [T,T,F,F,T,T] -> 4/6
#   Acc7: round(clip(., -3, 3)): true [0,2,-2,0,3,-0], pred [0,0,-1,-0,3,0]
#         matches at 0, 3, 4 (3.5 clipped to 3, unclipped would round to 4), 5 -> 4/6
#   MAE_all = (0.4 + 1.5 + 1.0 + 0.2 + 0.9 + 0.7) / 6 = 4.7/6
R_TRUE = np.array([0.0, 1.5, -2.0, 0.0, 2.6, -0.4])
R_PRED = np.array([0.4, 0.0, -1.0, -0.2, 3.5, 0.3])


def test_regression_hand_case():
    m = regression_metrics(R_TRUE, R_PRED)
    assert m["Acc2"] == pytest.approx(0.5)
    assert m["F1"] == pytest.approx(0.5)
    assert m["MAE"] == pytest.approx(1.025)
    assert m["Corr"] == pytest.approx(9.79 / math.sqrt(12.4475 * 11.38))
    assert m["Corr"] == pytest.approx(0.822565, abs=1e-5)
    assert m["Acc2_has0"] == pytest.approx(4 / 6)
    assert m["Acc7"] == pytest.approx(4 / 6)
    assert m["MAE_all"] == pytest.approx(4.7 / 6)
    assert m["Corr_all"] == pytest.approx(np.corrcoef(R_TRUE, R_PRED)[0, 1])
    assert m["n"] == 6


def test_regression_prediction_exactly_zero_is_negative():
    m = regression_metrics(np.array([1.0, -1.0]), np.array([0.0, 0.0]))
    assert m["Acc2"] == pytest.approx(0.5)  # 1.0 vs pred 0 (negative): wrong; -1.0: right
    assert m["Acc2_has0"] == pytest.approx(0.5)  # has-zero: pred 0 is ">= 0": right for 1.0 only


def test_regression_all_zero_labels():
    m = regression_metrics(np.zeros(4), np.array([0.1, -0.1, 0.0, 2.0]))
    for k in ("Acc2", "F1", "MAE", "Corr"):
        assert math.isnan(m[k])
    assert m["Acc2_has0"] == pytest.approx(3 / 4)  # -0.1 is the one "< 0"
    assert m["Acc7"] == pytest.approx(3 / 4)  # round(2.0) = 2 != 0


def test_regression_empty_has_headline_keys():
    m = regression_metrics(np.array([]), np.array([]))
    assert m["n"] == 0
    for k in headline_metrics(REG):
        assert math.isnan(m[k])


def test_corr_nan_for_constant_predictions():
    m = regression_metrics(np.array([1.0, -2.0, 3.0]), np.array([0.5, 0.5, 0.5]))
    assert math.isnan(m["Corr"])


# ---------------------------------------------------------------------- dispatch
def test_compute_metrics_classification_uses_argmax():
    scores = np.eye(4)[Y_PRED] * 0.9 + 0.025  # argmax = Y_PRED
    m = compute_metrics(CLS, Y_TRUE, scores)
    assert m == classification_metrics(Y_TRUE, Y_PRED, 4)


def test_compute_metrics_regression_flattens():
    m = compute_metrics(REG, R_TRUE, R_PRED.reshape(-1, 1))
    assert m == regression_metrics(R_TRUE, R_PRED)


def test_primary_and_headline():
    assert primary_metric(CLS) == "WA"
    assert primary_metric(REG) == "Acc2"
    assert headline_metrics(CLS) == ("WA", "UA", "F1")
    assert set(headline_metrics(REG)) <= set(regression_metrics(R_TRUE, R_PRED))
    assert set(headline_metrics(CLS)) <= set(classification_metrics(Y_TRUE, Y_PRED, 4))
