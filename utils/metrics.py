"""OOD metrics from scores where larger means more OOD, all in percent.

- ``auroc``: area under the ROC curve (the same whichever class is called positive).
- ``aupr_in`` / ``aupr_out``: trapezoidal area under the precision-recall curve with the in-distribution
  / the OOD images as positives (as the original code and OpenOOD compute them).
- ``fpr95_ood``: the original code's FPR at 95% TPR, OOD positive: the fraction of in-distribution images
  flagged when 95% of the OOD images are caught.
- ``fpr95_ind``: the common convention (Hendrycks & Gimpel 2017; Liang et al. 2018), in-distribution
  positive: the fraction of OOD images accepted when 95% of in-distribution images are accepted.
Both FPRs interpolate linearly on the ROC curve.
"""
from typing import Dict

import numpy as np
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score, roc_curve

METRICS = ("auroc", "fpr95_ood", "fpr95_ind", "aupr_in", "aupr_out")


def fpr_at_tpr(labels: np.ndarray, scores: np.ndarray, tpr_level: float = 0.95) -> float:
    """False-positive rate at ``tpr_level``, positives = ``labels == 1``, linear on the ROC curve."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(np.interp(tpr_level, tpr, fpr))


def aupr(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(auc(recall, precision))


def ood_metrics(ind_scores: np.ndarray, ood_scores: np.ndarray) -> Dict[str, float]:
    """All metrics of one in-distribution vs OOD comparison, in percent."""
    ind_scores, ood_scores = np.asarray(ind_scores, float), np.asarray(ood_scores, float)
    if len(ind_scores) == 0 or len(ood_scores) == 0:
        raise ValueError("metrics need at least one in-distribution and one OOD score")
    scores = np.concatenate([ind_scores, ood_scores])
    is_ood = np.concatenate([np.zeros(len(ind_scores), int), np.ones(len(ood_scores), int)])
    return {
        "auroc": 100 * float(roc_auc_score(is_ood, scores)),
        "fpr95_ood": 100 * fpr_at_tpr(is_ood, scores),
        "fpr95_ind": 100 * fpr_at_tpr(1 - is_ood, -scores),
        "aupr_in": 100 * aupr(1 - is_ood, -scores),
        "aupr_out": 100 * aupr(is_ood, scores),
    }
