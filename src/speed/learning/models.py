"""Teacher and student models (torch), and the registry of defaults per dataset.

* ``digits-cnn``  small CNN for 8x8 digits (default for ``digits``): two 3x3 conv
  layers (16, 32 channels), 2x2 max pool, FC 64; ~14k parameters.
* ``mlp``         one hidden layer of 128 units: a fast baseline for any input.
* ``compact-cnn`` two 3x3 conv layers (32, 64 channels), each followed by 2x2 max pool,
  FC 128 with dropout 0.3; ~420k parameters at 28x28, much cheaper per training step
  than ``pate-mnist`` (``benchmarks/teacher_recipes.py`` compares them).
* ``pate-mnist``  the PATE / SPEED MNIST CNN (docs/spec.md §6): conv 5x5x64 -> max pool 3x3/2
  -> local response norm -> conv 5x5x128 -> LRN -> max pool 3x3/2 -> FC 384 -> FC 192.
* ``pate-svhn``   PATE's deeper CNN used for SVHN: seven conv layers (3x3 96, 96,
  96 stride 2, 3x3 192, 192, 192 stride 2, 5x5 192) and two FC 192, on per-image
  standardised inputs.

The two PATE models follow the layer structure of the original TensorFlow code
(``inference`` / ``inference_deeper``) with torch's default initialisation; TF's LRN
``alpha=0.001/9`` with depth radius 4 is torch's ``LocalResponseNorm(9, alpha=0.001)`` (we use
an equivalent, faster :class:`LocalResponseNorm`).
Every model takes images in [0, 1] of shape (n, C, H, W) and returns logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from speed.errors import InputError


class Standardize(nn.Module):
    """Per-image standardisation (zero mean, unit variance), as PATE did for SVHN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        mean = flat.mean(dim=1).view(-1, 1, 1, 1)
        std = flat.std(dim=1).clamp_min(1.0 / float(flat.shape[1]) ** 0.5).view(-1, 1, 1, 1)
        return (x - mean) / std


class LocalResponseNorm(nn.Module):
    """Cross-channel local response normalisation, same maths as ``nn.LocalResponseNorm``.

    ``b_c = a_c / (k + alpha / size * sum_{c' = c - size//2 .. c + (size-1)//2} a_c'^2) ** beta``.
    Computed with a running sum over channels, faster on CPU than torch's version (which
    dominated the PATE MNIST CNN's training time).
    """

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sq = F.pad(x * x, (0, 0, 0, 0, self.size // 2 + 1, (self.size - 1) // 2))
        csum = sq.cumsum(dim=1)
        window = csum[:, self.size:] - csum[:, : -self.size]
        return x * (self.k + self.alpha / self.size * window).pow(-self.beta)


def _head(features: nn.Module, in_shape: tuple[int, int, int], hidden: list[int], num_classes: int,
          dropout: float = 0.0) -> nn.Sequential:
    with torch.no_grad():
        dim = features(torch.zeros(1, *in_shape)).flatten(1).shape[1]
    layers: list[nn.Module] = [features, nn.Flatten()]
    for h in hidden:
        layers += [nn.Linear(dim, h), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        dim = h
    layers.append(nn.Linear(dim, num_classes))
    return nn.Sequential(*layers)


def digits_cnn(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    c = in_shape[0]
    features = nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
    )
    return _head(features, in_shape, [64], num_classes)


def mlp(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return _head(nn.Identity(), in_shape, [128], num_classes)


def compact_cnn(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    c = in_shape[0]
    features = nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    )
    return _head(features, in_shape, [128], num_classes, dropout=0.3)


def pate_mnist_cnn(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    c = in_shape[0]
    features = nn.Sequential(
        nn.Conv2d(c, 64, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),
        LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1.0),
        nn.Conv2d(64, 128, 5, padding=2), nn.ReLU(),
        LocalResponseNorm(9, alpha=0.001, beta=0.75, k=1.0),
        nn.MaxPool2d(3, stride=2, padding=1),
    )
    return _head(features, in_shape, [384, 192], num_classes)


def pate_svhn_cnn(in_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    c = in_shape[0]

    def conv(i: int, o: int, k: int = 3, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(i, o, k, stride=stride, padding=k // 2), nn.ReLU()]

    features = nn.Sequential(
        Standardize(),
        *conv(c, 96), *conv(96, 96), *conv(96, 96, stride=2),
        *conv(96, 192), *conv(192, 192), *conv(192, 192, stride=2),
        *conv(192, 192, k=5),
    )
    return _head(features, in_shape, [192, 192], num_classes)


MODELS: dict[str, Callable[[tuple[int, int, int], int], nn.Module]] = {
    "digits-cnn": digits_cnn,
    "mlp": mlp,
    "compact-cnn": compact_cnn,
    "pate-mnist": pate_mnist_cnn,
    "pate-svhn": pate_svhn_cnn,
}

#: Default teacher/student model per dataset.
DEFAULT_MODEL = {
    "digits": "digits-cnn",
    "mnist": "pate-mnist",
    "fashion-mnist": "compact-cnn",  # as accurate as pate-mnist, and cheaper (benchmarks/teacher_recipes.py)
    "svhn": "pate-svhn",
    "cifar10": "pate-svhn",
}


def default_model(dataset_name: str) -> str:
    try:
        return DEFAULT_MODEL[dataset_name]
    except KeyError:
        raise InputError(f"no default model for dataset {dataset_name!r}") from None


def build_model(name: str, in_shape: tuple[int, int, int], num_classes: int, seed: int | None = None) -> nn.Module:
    """Instantiate model ``name`` for images of shape ``in_shape`` (C, H, W).

    With ``seed``, the initial weights depend only on the seed (the global torch RNG is
    left untouched).
    """
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if len(in_shape) != 3:
        raise InputError(f"in_shape must be (C, H, W), got {in_shape}")
    if num_classes < 2:
        raise InputError(f"num_classes must be >= 2, got {num_classes}")
    in_shape = tuple(int(s) for s in in_shape)  # type: ignore[assignment]
    if seed is None:
        return MODELS[name](in_shape, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MODELS[name](in_shape, num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
