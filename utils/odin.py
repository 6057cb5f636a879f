"""ODIN (Liang et al., ICLR 2018), the one baseline that needs the network itself: it is computed in
stage 2 (``save_inter_outputs.py --odin``) and read by the ``ODIN`` scoring method (utils/methods/logits.py)."""
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .inputs import normalization_of, to_input


def odin(model, images: np.ndarray, device: torch.device, temperature: float = 1000.0, epsilon: float = 0.0014,
         batch_size: int = 256, progress: Optional[str] = None) -> np.ndarray:
    """ODIN as in the authors' released code: perturb the normalised input against the gradient of the
    tempered cross-entropy with the predicted label, the sign of the gradient divided per channel by the
    normalisation std, times ``epsilon``; score = minus the max tempered softmax of the perturbed input.
    T = 1000 and epsilon = 0.0014 are fixed (no OOD data chooses them)."""
    model.eval()
    norm = normalization_of(model)
    std = torch.tensor(norm.std, device=device).view(1, 3, 1, 1)
    scores = []
    for s in tqdm(range(0, len(images), batch_size), desc=progress or "odin", leave=False, disable=progress is None):
        x = to_input(images[s:s + batch_size], device, normalization=norm).requires_grad_(True)
        logits = model(x) / temperature
        loss = F.cross_entropy(logits, logits.argmax(1))
        grad, = torch.autograd.grad(loss, x)
        x_pert = x.detach() - epsilon * grad.sign() / std
        with torch.no_grad():
            scores.append(-torch.softmax(model(x_pert) / temperature, 1).max(1).values.cpu())
    return torch.cat(scores).double().numpy()
