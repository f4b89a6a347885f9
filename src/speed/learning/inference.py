"""A trained model's outputs on images: class probabilities, labels and accuracy (batched, no
gradients)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["accuracy", "predict", "predict_proba"]


@torch.no_grad()
def predict_proba(model: nn.Module, x: np.ndarray, batch_size: int = 512,
                  device: str | torch.device | None = None) -> np.ndarray:
    """Softmax outputs, float32 (n, K)."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        xb = torch.as_tensor(np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32), device=dev)
        out.append(F.softmax(model(xb), dim=1).cpu())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy()


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 512,
            device: str | torch.device | None = None) -> np.ndarray:
    """Predicted labels, int64 (n,); ties go to the lowest class index."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    out = [np.zeros(0, dtype=np.int64)]
    for start in range(0, len(x), batch_size):
        xb = torch.as_tensor(np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32), device=dev)
        out.append(model(xb).argmax(dim=1).cpu().numpy().astype(np.int64))
    return np.concatenate(out)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Fraction of ``x`` that ``model`` labels as ``y``."""
    if len(y) == 0:
        return float("nan")
    return float(np.mean(predict(model, x, batch_size) == np.asarray(y)))
