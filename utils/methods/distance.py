"""Distance-based methods on the penultimate features: class-conditional Gaussians and nearest neighbours."""
import numpy as np

from .base import Inputs, register_method
from .blocks import KNN, Mahalanobis


@register_method("Mahalanobis", ["penultimate", "labels"], "Lee et al., NeurIPS 2018; penultimate layer")
def _mahalanobis(inp: Inputs):
    maha = Mahalanobis().fit(inp.train["penultimate"], inp.train["labels"])
    return inp.each(lambda f: maha.score(f["penultimate"]))


@register_method("KNN", ["penultimate"], "Sun et al., ICML 2022; faiss where installed",
                 grid={"k": lambda inp: [k for k in (50, 100, 200, 500, 1000) if k <= len(inp.train["penultimate"])]},
                 grid_source="OpenOOD v1.0 (knn)")
def _knn(inp: Inputs, k=50):
    knn = KNN(k=k).fit(inp.train["penultimate"])
    return inp.each(lambda f: knn.score(f["penultimate"]))


@register_method("RMDS", ["penultimate", "labels"], "Ren et al., 2021 (relative Mahalanobis); no hyperparameters")
def _rmds(inp: Inputs):
    """min_k d_k(z) - d_0(z): the class-conditional Mahalanobis distance relative to one background Gaussian of
    all train features. Written here rather than called from pytorch-ood for float64 accuracy: pytorch-ood's
    ``RMD`` works in float32 and inverts the unnormalised covariance with ``inv``, which features with dead
    units (VGG16's penultimate layer has some) make singular; this uses the pseudo-inverse in float64, as
    the Mahalanobis entry does."""
    X, labels = inp.train["penultimate"], np.asarray(inp.train["labels"])
    classes = Mahalanobis().fit(X, labels)
    background = Mahalanobis().fit(X, np.zeros_like(labels))
    return inp.each(lambda f: classes.score(f["penultimate"]) - background.score(f["penultimate"]))
