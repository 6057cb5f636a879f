"""The RBF One-Class SVM's decision function in torch: differentiable (co-training) and batched on any
device (scoring, ``--score-device``)."""
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
from sklearn.pipeline import Pipeline

from .ocsvm import KernelOneClassSVM


class OCSVMDecision(nn.Module):
    """The One-Class SVM decision value without its offset, in torch: ``sum_j alpha_j k(z, s_j)``.

    Equals the detector's ``decision_function(z) + offset_`` on standardised inputs ``z``; all
    support vectors in one batched kernel computation, differentiable in ``z``.
    """

    def __init__(self, svm: KernelOneClassSVM, dtype: torch.dtype = torch.float32):
        super().__init__()
        if not is_rbf_svm(svm):
            raise ValueError(f"the torch decision function (co-training, --score-device) needs RBF One-Class SVM "
                             f"detectors, got {type(svm).__name__}")
        self.register_buffer("sv", torch.as_tensor(svm.support_vectors_, dtype=dtype))
        self.register_buffer("alpha", torch.as_tensor(svm.dual_coef_.ravel(), dtype=dtype))
        self.register_buffer("sv_sq", self.sv.pow(2).sum(1))
        self.gamma = float(svm.gamma)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.to(self.sv.dtype)
        d2 = (z.pow(2).sum(1, keepdim=True) - 2 * z @ self.sv.T + self.sv_sq).clamp_min(0)
        return torch.exp(-self.gamma * d2) @ self.alpha


def is_rbf_svm(est) -> bool:
    return isinstance(est, KernelOneClassSVM)


@torch.no_grad()
def torch_ood_score(pipeline: Pipeline, X: np.ndarray, device: torch.device, dtype: Optional[torch.dtype] = None,
                    max_elements: int = 1 << 25) -> np.ndarray:
    """``-pipeline.decision_function(X)`` for a ``Pipeline(StandardScaler, OneClassSVM)``, computed with torch on
    ``device`` in batches of at most ``max_elements`` kernel entries. ``dtype``: float64 on the CPU (equal to
    scikit-learn to ~1e-12), float32 elsewhere (GPUs are fast in it) unless given."""
    device = torch.device(device)
    dtype = dtype or (torch.float64 if device.type == "cpu" else torch.float32)
    scaler, svm = pipeline[0], pipeline[-1]
    kernel = OCSVMDecision(svm, dtype).to(device)
    mean = torch.as_tensor(scaler.mean_, dtype=dtype, device=device)
    scale = torch.as_tensor(scaler.scale_, dtype=dtype, device=device)
    batch = max(1, max_elements // max(len(svm.support_vectors_), 1))
    out = np.empty(len(X), dtype=np.float64)
    for s in range(0, len(X), batch):
        x = torch.tensor(np.asarray(X[s:s + batch]), dtype=dtype, device=device)   # a copy: X may be a read-only map
        out[s:s + batch] = (float(svm.offset_) - kernel((x - mean) / scale)).double().cpu().numpy()
    return out
