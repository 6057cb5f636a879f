"""Exploration for a layer-adaptive variant that also catches near-OOD (README, "Beyond the original").

Combines the calibrated per-layer One-Class SVM scores of `--calibration-size 5000` detectors with the
energy score, standardised on the same 5,000 held-out train images. Needs the full-size VGG16 run and
its calibrated detectors (see the README). Exploratory: the rows vary k, and reading k off this table
would be tuning on OOD data.
"""
import sys, json, numpy as np
sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[1]))
from utils.features import load_features
from utils.metrics import ood_metrics
from utils.baselines import energy
from utils.pipeline import balanced_indices
run='runs/cifar10/vgg16-ce8d1176/trainall-testall-ood10000-seed0'
res=run+'/results/ocsvm-cal5000-seed0/scores/'
cal=json.load(open(run+'/detectors/ocsvm-cal5000-seed0/calibration.json'))
mu,sd=np.array(cal['mean']),np.array(cal['std'])
sets=['tiny','dtd','cifar100','pure_color']
S={n: np.load(res+n+'.npy') for n in ['test']+sets}
E={n: energy(load_features(run,n)['logits']) for n in ['test']+sets}
tr=load_features(run,'train'); perm=np.random.default_rng(0).permutation(50000); held=np.sort(perm[:5000])
Etr=energy(tr['logits'][held]); em,es=Etr.mean(),Etr.std()
def evaluate(f, name):
    out={}
    for n in sets:
        i,o=balanced_indices(len(S['test']),len(S[n]),0)
        out[n]=ood_metrics(f('test')[i], f(n)[o])['auroc']
    print(f"{name:45s}", ' '.join(f"{out[n]:6.2f}" for n in sets), f" mean {np.mean(list(out.values())):.2f}")
z=lambda n: (S[n]-mu)/sd
ez=lambda n: (E[n]-em)/es
evaluate(lambda n: S[n].max(1), 'raw max')
evaluate(lambda n: E[n], 'energy')
evaluate(lambda n: z(n).max(1), 'calibrated max')
evaluate(lambda n: np.maximum(z(n).max(1), ez(n)), 'max(calibrated layers, energy z)')
for k in [2,3,4,5,6]:
    evaluate(lambda n: np.maximum(z(n)[:,:k].max(1), ez(n)), f'max(z layers 1..{k}, energy z)')
    evaluate(lambda n: z(n)[:,:k].max(1) + ez(n), f'z layers 1..{k} max + energy z')
