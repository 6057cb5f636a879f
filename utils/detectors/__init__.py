"""Per-layer one-class detectors, with the scikit-learn estimator contract.

Sign convention, used everywhere in this repository: **an OOD score is larger for more anomalous
inputs**. For a fitted pipeline it is ``-decision_function``.

A layer's detector is a ``Pipeline(StandardScaler, estimator)``: the scaler is fitted on all in-distribution
train features of the layer and travels with the detector. Kinds register themselves (``--detector``):

- ``ocsvm`` (:mod:`.ocsvm`): libsvm's exact RBF One-Class SVM, as the original; gamma by SAS (:mod:`.sas`).
- ``ocsvm-approx`` (:mod:`.approx`): Nystroem features and an averaged-SGD linear One-Class SVM, linear in n.
- ``iforest`` (:mod:`.iforest`): an Isolation Forest.
- ``auto``: ``ocsvm`` up to :data:`AUTO_EXACT_MAX` fitting images, ``ocsvm-approx`` above.

:class:`LAOOD` (:mod:`.ensemble`) fits one per layer and takes the maximum; :mod:`.calibration` standardises
the layer scores on held-back images and exits early. Fitted detectors are saved as arrays and JSON
(:func:`save_detector`, :func:`load_detector`), never pickled. A new kind is one module with a
:class:`DetectorKind` subclass decorated with :func:`register_detector`, imported below (docs/methods.md).
"""
from . import approx, iforest, ocsvm  # noqa: F401  (importing a kind's module registers it)
from .approx import APPROX_LANDMARKS, APPROX_SELECT_SIZE, ApproxOneClassSVM
from .calibration import TAIL_LEVEL, Calibration, calibration_split, early_exit, exit_cost
from .ensemble import LAOOD
from .iforest import IsolationTrees
from .ocsvm import KernelOneClassSVM
from .registry import (AUTO_EXACT_MAX, DetectorFileError, DetectorKind, detector_choices, fit_layer, get_detector,
                       list_detectors, load_detector, ood_score, register_detector, resolve_detector, save_detector)
from .sas import GAMMAS, NU, sas_k, select_gamma, shift_data

__all__ = ["APPROX_LANDMARKS", "APPROX_SELECT_SIZE", "AUTO_EXACT_MAX", "GAMMAS", "LAOOD", "NU", "TAIL_LEVEL",
           "ApproxOneClassSVM", "Calibration", "DetectorFileError", "DetectorKind", "IsolationTrees",
           "KernelOneClassSVM", "calibration_split", "detector_choices", "early_exit", "exit_cost", "fit_layer",
           "get_detector", "list_detectors", "load_detector", "ood_score", "register_detector", "resolve_detector",
           "save_detector", "sas_k", "select_gamma", "shift_data"]
