"""Methods that read many layers: Mahalanobis on every tap, Gram deviations, NAC-UE's neuron coverage."""
import numpy as np

from .. import nac_authors
from .base import HELD, Inputs, register_method, standardise_on
from .blocks import Mahalanobis


@register_method("Mahalanobis (all layers)", ["layers", "labels"],
                 "Lee et al., NeurIPS 2018; every tapped layer, standardised on held-back train images, summed")
def _mahalanobis_layers(inp: Inputs):
    held, kept = inp.held_split()
    labels = np.asarray(inp.train["labels"])
    total = {n: 0.0 for n in inp.sets}
    for i in range(len(inp.train["layers"])):
        maha = Mahalanobis().fit(np.asarray(inp.train["layers"][i][kept]), labels[kept])
        per_set = {n: maha.score(f["layers"][i]) for n, f in inp.sets.items()}
        per_set[HELD] = maha.score(np.asarray(inp.train["layers"][i][held]))
        for n, z in standardise_on(per_set).items():
            total[n] = total[n] + z
    return total


@register_method("Gram", ["gram"], "Sastry and Oore, ICML 2020; poles 1-10, every tapped layer")
def _gram(inp: Inputs):
    bounds = inp.train["gram_bounds"]
    return inp.each(lambda f: bounds.score(f["gram"]))


@register_method("NAC-UE (pytorch-ood)", ["nac"], "Liu et al., ICLR 2024; the taps of --nac (all, or --nac-taps), pytorch-ood's "
                                    "alpha 100, M 50, O* 50")
def _nac_ue(inp: Inputs):
    from ..nac import Coverage
    taps = inp.train.get("nac_taps")
    for name, f in inp.sets.items():
        if f.get("nac_taps") != taps:
            raise ValueError(f"NAC-UE: set {name!r} has NAC values of other taps than the train split "
                             f"({f.get('nac_taps')} against {taps}); rerun save_inter_outputs.py --force with one "
                             f"--nac-taps for every set")
    coverage = Coverage(inp.train["nac_widths"]).fit(inp.train["nac"])
    return inp.each(lambda f: coverage.score(f["nac"]))


def _depth_grid(depth: int):
    """The authors' grid of one layer (deepest first) where the model has that layer, else its default only."""
    def grid(inp: Inputs):
        layers = 1 + len(inp.train["nac_stages_fit"]["stages"])
        return nac_authors.CIFAR10_GRID[depth] if depth < layers else (nac_authors.CIFAR10_SETTING[depth],)
    return grid


@register_method("NAC-UE (authors)", ["nac_stages", "penultimate", "head", "labels"],
                 "Liu et al., ICLR 2024, as their code computes it (utils/nac_authors.py); per layer (M, O*, alpha), "
                 "deepest first: the pooled features, then the stages from the last up",
                 grid={f"layer{d}": _depth_grid(d) for d in range(4)}, grid_source="the authors' CIFAR-10 sweep")
def _nac_ue_authors(inp: Inputs, layer0=nac_authors.CIFAR10_SETTING[0], layer1=nac_authors.CIFAR10_SETTING[1],
                    layer2=nac_authors.CIFAR10_SETTING[2], layer3=nac_authors.CIFAR10_SETTING[3]):
    fit = inp.train["nac_stages_fit"]
    for name, f in inp.sets.items():
        if f["nac_stages"]["names"] != fit["names"]:
            raise ValueError(f"NAC-UE (authors): set {name!r} has values of stages {f['nac_stages']['names']}, the train "
                             f"split of {fit['names']}; rerun save_inter_outputs.py --nac-stages with one --nac-stages")
    pooled = lambda pen: nac_authors.pooled_products(pen, inp.head)  # noqa: E731
    train = [pooled(np.asarray(inp.train["penultimate"])[fit["rows"]]), *fit["stages"]]
    sets = {n: [pooled(f["penultimate"]), *f["nac_stages"]["stages"]] for n, f in inp.sets.items()}
    settings = (layer0, layer1, layer2, layer3)
    return nac_authors.nac_ue(train, sets, settings + (layer3,) * max(0, len(train) - len(settings)))
