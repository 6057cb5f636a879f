"""The shared checkpoints, loaded strictly through the package, reach their stated float32 test accuracy."""
import pytest
import torch

from conftest import CHECKPOINTS, DATA, ROOT, need
from models import PRESETS, load_model
from utils.data import find_source, load_subset
from utils.engine import evaluate

pytestmark = [pytest.mark.shared, pytest.mark.slow]


@pytest.fixture(scope="module")
def cifar10_test():
    source, missing = find_source("cifar10", "test", [need(DATA)])
    assert source is not None, missing
    return load_subset(source, None, seed=0)


@pytest.mark.parametrize("file,arch,norm,stated", [
    ("vgg16-cifar10.pt", "vgg16", None, 90.18),
    ("resnet20-cifar10-akamaster.th", "resnet20", None, 91.73),
    ("resnet56-cifar10-akamaster.th", "resnet56", None, 93.39),
    ("densenet100-cifar10-dice.pth.tar", "densenet100", None, 94.54),   # the recipe's: CIFAR's, as DICE trained it
])
def test_stated_accuracy_within_a_tenth_of_a_point(cifar10_test, file, arch, norm, stated):
    images, labels = cifar10_test
    assert len(images) == 10000
    model = load_model(need(CHECKPOINTS / file), arch, 10, PRESETS[norm] if norm else None)
    batch = 64 if arch == "densenet100" else 500       # DenseNet-BC's faster batch on a CPU (docs/benchmarks.md)
    acc = evaluate(model, images, labels, torch.device("cpu"), batch_size=batch, amp="off")["test_acc"]
    assert abs(acc - stated) <= 0.1, f"{arch}: {acc:.2f}% measured, {stated}% stated"


@pytest.mark.parametrize("file,subset,stated", [
    ("resnet34-cifar10-swa3-fp16.pt", None, 92.03),     # the results tables': the weight average of three cycle ends
    ("resnet34-cifar10-2cycles15-fp16.pt", 2000, 92.20),  # the average's first member (91.67% on all 10,000), on the
])                                                       # seeded 2,000 that --max-test 2000 takes, to save CI 3 minutes
def test_resnet34_trained_here(cifar10_test, file, subset, stated):
    """The ResNet34s trained on this CPU and committed in float16 (checkpoints/README.md): their stated accuracy."""
    images, labels = cifar10_test
    if subset:
        images, labels = load_subset(find_source("cifar10", "test", [need(DATA)])[0], subset, seed=0)
    model = load_model(ROOT / "checkpoints" / file, "resnet34", 10)
    assert model.normalization.name == "imagenet"                     # recorded in the file
    acc = evaluate(model, images, labels, torch.device("cpu"), amp="off")["test_acc"]
    assert abs(acc - stated) <= 0.1, f"resnet34 {file}: {acc:.2f}% measured, {stated}% stated"
