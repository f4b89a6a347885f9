"""The training loop shared by the teachers and the student, and the settings it takes.

Optimisers (``TrainConfig.optimizer``):

* ``"sgd"``  plain SGD (optional momentum), the paper's choice for MNIST
  (5,000 steps, batch 64, lr 0.08; docs/spec.md §6).
* ``"adam"`` Adam, our default for the small digits models and for the student.

Minibatches are drawn epoch by epoch from a seeded permutation (every example once per
epoch); a batch size at least the shard size uses the whole shard each step.

Determinism: given a seed, model initialisation, batch order, augmentation and dropout
are reproducible (the global torch RNG is forked, not consumed).  Bitwise equality
additionally needs the same torch build, device and thread count.

With unlabelled images the loop adds the semi-supervised (FixMatch-lite) loss described in
:mod:`speed.learning.student`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speed.errors import InputError
from speed.learning.augment import strong_augment, weak_augment

__all__ = ["TrainConfig", "check_xy", "derive_seed", "torch_threads", "train_loop", "train_model"]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings for one model."""

    steps: int
    batch_size: int
    lr: float
    optimizer: str = "adam"  # "adam" or "sgd"
    momentum: float = 0.0  # SGD only
    weight_decay: float = 0.0
    augment: bool = False  # random shifts of up to max(1, H // 14) pixels
    schedule: str = "constant"  # learning rate: "constant" or "cosine" (decays to 0 at the last step)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or not self.lr > 0:
            raise InputError(f"bad training config: {self}")
        if self.optimizer not in ("adam", "sgd"):
            raise InputError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.schedule not in ("constant", "cosine"):
            raise InputError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")


def derive_seed(*parts: int) -> int:
    """A 31-bit seed derived from integers (e.g. a run seed and a holder index)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads (None: leave as is), restoring afterwards."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _batches(n: int, batch_size: int, steps: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    if batch_size >= n:
        full = np.arange(n)
        for _ in range(steps):
            yield full
        return
    buf = np.empty(0, dtype=np.int64)
    for _ in range(steps):
        while len(buf) < batch_size:
            buf = np.concatenate([buf, rng.permutation(n)])
        yield buf[:batch_size]
        buf = buf[batch_size:]


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def check_xy(x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim != 4:
        raise InputError(f"images must have shape (n, C, H, W), got {x.shape}")
    if y.shape != (len(x),):
        raise InputError(f"labels must have shape ({len(x)},), got {y.shape}")
    if len(x) == 0:
        raise InputError("cannot train on an empty set")


def train_model(model: nn.Module, x: np.ndarray, y: np.ndarray, steps: int, batch_size: int, lr: float,
                seed: int = 0, *, optimizer: str = "adam", momentum: float = 0.0, weight_decay: float = 0.0,
                augment: bool = False, schedule: str = "constant", flip: bool = False,
                device: str | torch.device | None = None) -> nn.Module:
    """Train ``model`` in place with cross-entropy for ``steps`` minibatch steps.

    Returns the model in eval mode on the CPU.  ``flip`` adds random left-right mirrors to the
    augmentation.  ``device`` (e.g. ``"cuda"``) only changes where the computation runs.
    """
    cfg = TrainConfig(steps, batch_size, lr, optimizer, momentum, weight_decay, augment, schedule)
    return train_loop(model, x, y, cfg, seed, flip=flip, device=device)


def train_loop(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, seed: int, *,
               x_unlabelled: np.ndarray | None = None, threshold: float = 0.95, unlabelled_ratio: int = 3,
               unlabelled_weight: float = 1.0, rampup: float = 0.2, ema: float | None = None,
               flip: bool = False, device: str | torch.device | None = None) -> nn.Module:
    """Train ``model`` in place with ``cfg`` (the module docstring); with ``x_unlabelled``, the
    semi-supervised loss of :mod:`speed.learning.student` is added.  Returns the model in eval mode
    on the CPU."""
    check_xy(x, y)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    gen = torch.Generator(device=dev)
    gen.manual_seed(derive_seed(seed, 2))
    xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=dev)
    yt = torch.as_tensor(np.asarray(y, dtype=np.int64), device=dev)
    semi = x_unlabelled is not None and len(x_unlabelled) > 0
    if semi:
        ut = torch.as_tensor(np.ascontiguousarray(x_unlabelled, dtype=np.float32), device=dev)
        u_batches = _batches(len(ut), unlabelled_ratio * cfg.batch_size, cfg.steps,
                             np.random.default_rng(np.random.SeedSequence([seed, 3])))
    model.to(dev)
    avg = [p.detach().clone() for p in model.state_dict().values()] if ema else None
    opt = _optimizer(model, cfg)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.steps))
             if cfg.schedule == "cosine" else None)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(derive_seed(seed, 4))  # dropout
        model.train()
        for step, idx in enumerate(_batches(len(xt), cfg.batch_size, cfg.steps, rng)):
            ib = torch.as_tensor(idx, device=dev)
            xb = xt[ib]
            if cfg.augment:
                xb = weak_augment(xb, gen, flip)
            loss = F.cross_entropy(model(xb), yt[ib])
            if semi:
                ub = ut[torch.as_tensor(next(u_batches), device=dev)]
                with torch.no_grad():
                    probs = F.softmax(model(weak_augment(ub, gen, flip)), dim=1)
                    conf, pseudo = probs.max(dim=1)
                    mask = (conf >= threshold).to(xb.dtype)
                u_loss = (F.cross_entropy(model(strong_augment(ub, gen, flip)), pseudo, reduction="none") * mask).mean()
                ramp = min(1.0, (step + 1) / max(1.0, rampup * cfg.steps))
                loss = loss + unlabelled_weight * ramp * u_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if avg is not None:
                with torch.no_grad():
                    for a, p in zip(avg, model.state_dict().values()):
                        if a.dtype.is_floating_point:
                            a.mul_(ema).add_(p, alpha=1.0 - ema)
                        else:
                            a.copy_(p)
    if avg is not None:
        model.load_state_dict(dict(zip(model.state_dict().keys(), avg)))
    model.eval()
    return model.cpu()
