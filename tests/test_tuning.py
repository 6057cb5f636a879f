"""The validation split and the hyperparameter search of ``--tune`` (utils/tuning.py), on cases with known answers."""
import numpy as np
import pytest

from utils import methods
from utils.methods import Inputs, get_method, register_method
from utils.tuning import VAL_IN, VAL_OUT, remaining, search, validation_split


def test_the_validation_split_is_seeded_balanced_and_disjoint_from_what_is_evaluated():
    labels = np.repeat(np.arange(10), 1000)[np.random.default_rng(0).permutation(10000)]
    ind, ood = validation_split(labels, 10000, seed=0)
    assert len(ind) == 1000 and np.array_equal(np.bincount(labels[ind]), [100] * 10)
    assert len(ood) == 1000 and len(np.unique(ood)) == 1000 and ood.max() < 10000
    kept = remaining(10000, ind)
    assert len(kept) == 9000 and not np.intersect1d(kept, ind).size and np.array_equal(np.sort(np.r_[kept, ind]),
                                                                                      np.arange(10000))
    again = validation_split(labels, 10000, seed=0)
    other = validation_split(labels, 10000, seed=1)
    assert np.array_equal(again[0], ind) and np.array_equal(again[1], ood)
    assert not np.array_equal(other[0], ind) and not np.array_equal(other[1], ood)
    # CIFAR-100's 100 classes: 10 of each.
    ind100, _ = validation_split(np.repeat(np.arange(100), 100), 10000, seed=0)
    assert np.array_equal(np.bincount(np.repeat(np.arange(100), 100)[ind100]), [10] * 100)


def test_the_validation_split_refuses_sets_it_would_empty():
    with pytest.raises(ValueError, match="would leave none"):
        validation_split(np.repeat(np.arange(10), 100), 10000, seed=0)       # 100 per class is all of them
    with pytest.raises(ValueError, match="would leave none"):
        validation_split(np.repeat(np.arange(10), 1000), 1000, seed=0)


@pytest.fixture
def blend():
    """A method whose score mixes feature 0 (which separates the validation OOD images) and feature 1 (noise)
    by its hyperparameter w: the search must pick w = 1 over the default 0; a second, whose grid changes
    nothing, must keep its default."""
    @register_method("blend (test)", ["penultimate"], grid={"w": (0.0, 0.5, 1.0)})
    def _blend(inp, w=0.0):
        return inp.each(lambda f: w * f["penultimate"][:, 0] + (1 - w) * f["penultimate"][:, 1])

    @register_method("flat (test)", ["penultimate"], grid={"c": (1.0, 2.0, 3.0)})
    def _flat(inp, c=2.0):
        return inp.each(lambda f: f["penultimate"][:, 0])
    yield
    methods._METHODS.pop("blend (test)")
    methods._METHODS.pop("flat (test)")


def _val_inputs(rng, n=200):
    ind = rng.normal(size=(n, 2))
    ood = rng.normal(size=(n, 2)) + [3.0, 0.0]
    feats = lambda x: {"penultimate": x, "logits": x, "labels": np.zeros(len(x), int), "layers": [x]}  # noqa: E731
    return Inputs(train=feats(rng.normal(size=(n, 2))), sets={VAL_IN: feats(ind), VAL_OUT: feats(ood)})


def test_the_search_picks_the_best_validation_auroc_and_keeps_defaults_on_ties(blend):
    found = search(["blend (test)", "flat (test)", "MSP"], _val_inputs(np.random.default_rng(0)))
    assert set(found) == {"blend (test)", "flat (test)"}                       # MSP has no grid
    b = found["blend (test)"]
    assert b["chosen"] == {"w": 1.0} and b["val_auroc"] > 95 and 35 < b["default_val_auroc"] < 65
    assert [p["values"]["w"] for p in b["points"]] == [0.0, 0.5, 1.0]          # the defaults first
    assert found["flat (test)"]["chosen"] == {"c": 2.0}                        # equal everywhere: the default
    assert [p["values"]["c"] for p in found["flat (test)"]["points"]] == [2.0, 1.0, 3.0]


def test_the_search_reads_nothing_but_the_validation_sets(blend):
    val = _val_inputs(np.random.default_rng(0))
    val.sets["lsun"] = val.sets[VAL_OUT]
    with pytest.raises(ValueError, match="validation sets only"):
        search(["blend (test)"], val)


def test_every_declared_grid_resolves_and_includes_the_default():
    rng = np.random.default_rng(0)
    pen = np.abs(rng.normal(size=(500, 64)))
    head = (rng.normal(size=(10, 64)), np.zeros(10))
    feats = {"penultimate": pen, "logits": pen @ head[0].T, "labels": rng.integers(0, 10, 500), "layers": [pen]}
    inp = Inputs(train=feats, sets={"test": feats}, head=head)
    for name in methods.list_methods():
        m = get_method(name)
        if m.missing(inp):
            continue
        points = m.grid_points(inp)
        assert points[0] == m.defaults and len({tuple(sorted(p.items())) for p in points}) == len(points), name
    assert {p["dim"] for p in get_method("ViM").grid_points(inp)} == {None, 16, 32, 48}   # below the width 64
    assert {p["m"] for p in get_method("GEN").grid_points(inp)} == {10}                    # ten classes
    assert max(p["k"] for p in get_method("KNN").grid_points(inp)) <= 500
