"""Metrics against hand-computed cases and scikit-learn."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from utils.metrics import ood_metrics


def test_perfect_and_reversed_separation():
    m = ood_metrics(np.array([0.0, 0.1, 0.2]), np.array([1.0, 2.0]))
    assert m["auroc"] == 100 and m["fpr95_ood"] == 0 and m["fpr95_ind"] == 0
    assert m["aupr_in"] == pytest.approx(100) and m["aupr_out"] == pytest.approx(100)
    r = ood_metrics(np.array([1.0, 2.0]), np.array([0.0, 0.1]))
    assert r["auroc"] == 0 and r["fpr95_ood"] == 100 and r["fpr95_ind"] == 100


def test_hand_computed_case():
    # in-distribution scores 1..4, OOD scores 2.5 and 5: of the 8 (ind, ood) pairs, OOD ranks higher in 6.
    ind, ood = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.5, 5.0])
    m = ood_metrics(ind, ood)
    assert m["auroc"] == pytest.approx(100 * 6 / 8)
    # OOD positive ROC points (fpr, tpr): (0,0) (0,.5) (.5,.5) (.5,1) (1,1). TPR 0.95 first reached at fpr 0.5.
    assert m["fpr95_ood"] == pytest.approx(50.0)
    # In-distribution positive (score -s): (0,0) (0,.25) (0,.5) (.5,.5)... TPR .95 lies between (.5,.75)
    # and (.5,1.0) -> fpr .5, i.e. one of the two OOD images is accepted.
    assert m["fpr95_ind"] == pytest.approx(50.0)


def test_against_sklearn_on_random_scores():
    rng = np.random.default_rng(0)
    ind, ood = rng.normal(0, 1, 500), rng.normal(1, 1, 300)
    labels = np.r_[np.zeros(500), np.ones(300)]
    scores = np.r_[ind, ood]
    m = ood_metrics(ind, ood)
    assert m["auroc"] == pytest.approx(100 * roc_auc_score(labels, scores))
    # The trapezoidal AUPR is close to (not equal to) average precision on continuous scores.
    assert m["aupr_out"] == pytest.approx(100 * average_precision_score(labels, scores), abs=1.0)
    assert m["aupr_in"] == pytest.approx(100 * average_precision_score(1 - labels, -scores), abs=1.0)
    # FPR at 95% TPR for two unit Gaussians one sigma apart: Phi(1.645 - 1) = 74% either way.
    assert m["fpr95_ood"] == pytest.approx(74, abs=4) and m["fpr95_ind"] == pytest.approx(74, abs=4)


def test_empty_input_is_an_error():
    with pytest.raises(ValueError, match="at least one"):
        ood_metrics(np.array([]), np.array([1.0]))
