"""Many linear teachers trained as one batched model.

Each of T teachers is a softmax-regression head (a D × K weight matrix and K biases) on fixed
features (e.g. :mod:`speed.learning.features`).  All heads live in one (T, D, K) weight tensor;
one forward pass is a single ``torch.baddbmm`` (per-teacher inputs, (T, n, D)) or one matrix
product (inputs shared by all teachers, (n, D)), and one full-batch Adam step updates every head.

Why the batch changes nothing: the loss is the *sum* over teachers of each teacher's mean
cross-entropy (+ its own L2 penalty), so the gradient with respect to head t is the gradient of
teacher t's loss alone, and Adam is element-wise: head t follows exactly the trajectory it would
follow if trained by itself (up to floating-point summation order; tested in float64).  Head t's
initialisation is drawn from a generator seeded by ``(seed, teacher_ids[t])``, so it does not
depend on which other heads share the batch.

Shards of unequal sizes are padded to the largest and masked; each teacher's loss is the mean over
its own examples.

Checkpoints: :meth:`BatchedLinearTeachers.fit` with ``checkpoint`` saves the heads, the Adam state
and the step count every ``checkpoint_every`` steps (atomic write) under a caller-given
fingerprint; a later call with the same fingerprint resumes from the saved step, and the result
equals that of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from speed.errors import InputError, SpeedError
from speed.fsutil import atomic_path

BATCHED_FORMAT = 1

__all__ = ["BATCHED_FORMAT", "BatchedConfig", "BatchedLinearTeachers", "pad_shards"]


@dataclass(frozen=True)
class BatchedConfig:
    """Full-batch Adam for linear heads: ``steps``, learning rate ``lr``, L2 penalty
    ``weight_decay``·½‖W‖² per head (added to the loss, biases not penalised), initial weights
    N(0, ``init_std``²) (0: zeros)."""

    steps: int = 300
    lr: float = 1e-2
    weight_decay: float = 0.0
    init_std: float = 0.01

    def __post_init__(self) -> None:
        if self.steps < 0 or not self.lr > 0 or self.weight_decay < 0 or self.init_std < 0:
            raise InputError(f"bad batched training config: {self}")


def _derive_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] >> 1)


def pad_shards(features: np.ndarray, labels: np.ndarray, shards, dtype=np.float32
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack per-teacher shards: features[shards[t]] → x (T, n_max, D), y (T, n_max), mask (T, n_max).

    Padding rows are zeros with label 0 and mask False.
    """
    shards = [np.asarray(s, dtype=np.int64) for s in shards]
    if not shards or min(len(s) for s in shards) == 0:
        raise InputError("every teacher needs at least one example")
    n_max = max(len(s) for s in shards)
    x = np.zeros((len(shards), n_max, features.shape[1]), dtype=dtype)
    y = np.zeros((len(shards), n_max), dtype=np.int64)
    mask = np.zeros((len(shards), n_max), dtype=bool)
    for t, s in enumerate(shards):
        x[t, :len(s)] = features[s]
        y[t, :len(s)] = labels[s]
        mask[t, :len(s)] = True
    return x, y, mask


class _PerTeacherLinear(torch.autograd.Function):
    """baddbmm(b, x, W) whose backward reads a contiguous copy of xᵀ (T, D, n) made once per fit:
    autograd's default grad_W = bmm(xᵀ view, grad) is ~1.5x slower on a strided xᵀ."""

    @staticmethod
    def forward(ctx, x, xt, weight, bias):  # noqa: D401
        ctx.save_for_backward(xt)
        return torch.baddbmm(bias, x, weight)

    @staticmethod
    def backward(ctx, grad):
        (xt,) = ctx.saved_tensors
        return None, None, torch.bmm(xt, grad), grad.sum(dim=1, keepdim=True)


class BatchedLinearTeachers:
    """T linear heads on D features for K classes: ``weight`` (T, D, K), ``bias`` (T, 1, K)."""

    def __init__(self, num_teachers: int, dim: int, num_classes: int, *, seed: int = 0, init_std: float = 0.01,
                 teacher_ids=None, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        if num_teachers < 1 or dim < 1 or num_classes < 2:
            raise InputError(f"need >= 1 teacher, >= 1 feature, >= 2 classes; got {num_teachers}, {dim}, {num_classes}")
        ids = list(range(num_teachers)) if teacher_ids is None else [int(i) for i in teacher_ids]
        if len(ids) != num_teachers:
            raise InputError(f"teacher_ids has {len(ids)} entries for {num_teachers} teachers")
        self.seed, self.teacher_ids, self.num_classes = int(seed), ids, int(num_classes)
        dev = torch.device(device)
        w = torch.zeros(num_teachers, dim, num_classes, dtype=dtype)
        if init_std > 0:
            for t, i in enumerate(ids):
                gen = torch.Generator().manual_seed(_derive_seed(seed, i))
                w[t] = torch.randn(dim, num_classes, generator=gen, dtype=torch.float64).to(dtype) * init_std
        self.weight = w.to(dev).requires_grad_(True)
        self.bias = torch.zeros(num_teachers, 1, num_classes, dtype=dtype, device=dev).requires_grad_(True)
        self.steps_done = 0
        self.train_seconds = 0.0

    # ------------------------------------------------------------------ shapes
    @property
    def num_teachers(self) -> int:
        return self.weight.shape[0]

    @property
    def dim(self) -> int:
        return self.weight.shape[1]

    def _as_tensor(self, x) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=self.weight.dtype, device=self.weight.device)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(T, n, K) logits; ``x`` is (T, n, D) (one input set per teacher) or (n, D) (shared)."""
        t, d, k = self.weight.shape
        if x.ndim == 3:
            if x.shape[0] != t or x.shape[2] != d:
                raise InputError(f"inputs must be ({t}, n, {d}), got {tuple(x.shape)}")
            return torch.baddbmm(self.bias, x, self.weight)
        if x.ndim != 2 or x.shape[1] != d:
            raise InputError(f"inputs must be (n, {d}) or ({t}, n, {d}), got {tuple(x.shape)}")
        out = (x @ self.weight.permute(1, 0, 2).reshape(d, t * k)).reshape(len(x), t, k)
        return out.permute(1, 0, 2) + self.bias

    # ---------------------------------------------------------------- training
    def loss(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, weight_decay: float,
             xt: torch.Tensor | None = None) -> torch.Tensor:
        """Sum over teachers of (mean cross-entropy over the teacher's examples + wd/2 ‖W_t‖²).

        ``xt``: optional contiguous ``x.transpose(1, 2)`` for per-teacher inputs (faster backward).
        """
        if xt is not None and x.ndim == 3:
            if tuple(x.shape[::2]) != (self.num_teachers, self.dim):
                raise InputError(f"inputs must be ({self.num_teachers}, n, {self.dim}), got {tuple(x.shape)}")
            z = _PerTeacherLinear.apply(x, xt, self.weight, self.bias)
        else:
            z = self.logits(x)
        ce = F.cross_entropy(z.reshape(-1, z.shape[-1]), y.reshape(-1), reduction="none").reshape(y.shape)
        m = mask.to(ce.dtype)
        per_teacher = (ce * m).sum(dim=1) / m.sum(dim=1)
        total = per_teacher.sum()
        if weight_decay > 0:
            total = total + 0.5 * weight_decay * (self.weight ** 2).sum()
        return total

    def fit(self, x, y, mask=None, config: BatchedConfig = BatchedConfig(), *, progress: bool = False,
            checkpoint: str | os.PathLike | None = None, fingerprint: str | None = None,
            checkpoint_every: int = 50, stop_after: int | None = None) -> BatchedLinearTeachers:
        """Train every head for ``config.steps`` full-batch Adam steps (from ``steps_done``).

        ``x``: (T, n, D) or shared (n, D); ``y``: (T, n) int labels; ``mask``: (T, n) bool (default
        all True).  With ``checkpoint`` (+ ``fingerprint``, describing data, config and seed), the
        state is saved every ``checkpoint_every`` steps and at the end, and an existing checkpoint
        with the same fingerprint is resumed.  ``stop_after`` stops after that many steps of this
        call (for tests of resumption).
        """
        from tqdm.auto import tqdm

        xt = self._as_tensor(x)
        yt = torch.as_tensor(np.asarray(y), dtype=torch.int64, device=self.weight.device)
        if yt.ndim != 2 or yt.shape[0] != self.num_teachers or yt.shape[1] != xt.shape[-2]:
            raise InputError(f"labels must be ({self.num_teachers}, {xt.shape[-2]}), got {tuple(yt.shape)}")
        if yt.numel() and (int(yt.min()) < 0 or int(yt.max()) >= self.num_classes):
            raise InputError(f"labels must be in 0..{self.num_classes - 1}")
        mt = (torch.ones_like(yt, dtype=torch.bool) if mask is None
              else torch.as_tensor(np.asarray(mask), dtype=torch.bool, device=self.weight.device))
        if mt.shape != yt.shape or bool((mt.sum(dim=1) == 0).any()):
            raise InputError("mask must match the labels' shape and keep >= 1 example per teacher")
        xt_T = xt.transpose(1, 2).contiguous() if xt.ndim == 3 else None
        opt = torch.optim.Adam([self.weight, self.bias], lr=config.lr)
        path = Path(checkpoint) if checkpoint is not None else None
        if path is not None:
            if fingerprint is None:
                raise InputError("a checkpoint needs a fingerprint of the data, config and seed")
            state = self._read_checkpoint(path, fingerprint)
            if state is not None:
                self._restore(state)
                opt.load_state_dict(state["optimizer"])
        todo = config.steps - self.steps_done
        if stop_after is not None:
            todo = min(todo, int(stop_after))
        with tqdm(total=config.steps, initial=self.steps_done, desc=f"{self.num_teachers} linear heads",
                  unit="step", disable=not progress, dynamic_ncols=True) as bar:
            for _ in range(max(0, todo)):
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                loss = self.loss(xt, yt, mt, config.weight_decay, xt_T)
                loss.backward()
                opt.step()
                self.steps_done += 1
                self.train_seconds += time.perf_counter() - t0
                bar.update(1)
                if self.steps_done % 10 == 0:
                    bar.set_postfix(loss=f"{loss.item() / self.num_teachers:.3f}")
                if path is not None and (self.steps_done % checkpoint_every == 0 or self.steps_done == config.steps):
                    self._write_checkpoint(path, fingerprint, opt)
        if path is not None and todo > 0:
            self._write_checkpoint(path, fingerprint, opt)
        return self

    # --------------------------------------------------------------- inference
    @torch.no_grad()
    def predict_proba(self, x, batch_size: int = 2048) -> np.ndarray:
        """(T, n, K) softmax probabilities on shared inputs ``x`` (n, D)."""
        x = np.asarray(x)
        parts = [torch.softmax(self.logits(self._as_tensor(x[s:s + batch_size])), dim=-1).cpu().numpy()
                 for s in range(0, len(x), batch_size)]
        return np.concatenate(parts, axis=1) if parts else np.zeros((self.num_teachers, 0, self.num_classes))

    @torch.no_grad()
    def predict(self, x, batch_size: int = 2048) -> np.ndarray:
        """Every teacher's vote on every point: int64 (T, n) (argmax, ties to the lowest class).

        ``x`` is (n, D) shared by all teachers (the public queries) or (T, n, D).
        """
        x = np.asarray(x)
        if x.ndim == 3:
            return self.logits(self._as_tensor(x)).argmax(dim=-1).cpu().numpy().astype(np.int64)
        out = np.empty((self.num_teachers, len(x)), dtype=np.int64)
        for s in range(0, len(x), batch_size):
            out[:, s:s + batch_size] = self.logits(self._as_tensor(x[s:s + batch_size])).argmax(dim=-1).cpu().numpy()
        return out

    def accuracies(self, x, y) -> np.ndarray:
        """Each teacher's accuracy on shared points ``x`` with labels ``y``: (T,)."""
        return (self.predict(x) == np.asarray(y)[None, :]).mean(axis=1)

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        return {
            "format": BATCHED_FORMAT, "weight": self.weight.detach().cpu().clone(),
            "bias": self.bias.detach().cpu().clone(), "seed": self.seed, "teacher_ids": list(self.teacher_ids),
            "num_classes": self.num_classes, "steps_done": self.steps_done, "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != BATCHED_FORMAT:
            raise SpeedError("not a batched linear teachers state (unknown format)")
        if tuple(state["weight"].shape) != tuple(self.weight.shape):
            raise SpeedError(f"state has weights {tuple(state['weight'].shape)}, expected {tuple(self.weight.shape)}")
        self._restore(state)

    def _restore(self, state: dict) -> None:
        with torch.no_grad():
            self.weight.copy_(state["weight"].to(self.weight.dtype))
            self.bias.copy_(state["bias"].to(self.bias.dtype))
        self.seed, self.teacher_ids = int(state["seed"]), list(state["teacher_ids"])
        self.num_classes = int(state["num_classes"])
        self.steps_done = int(state["steps_done"])
        self.train_seconds = float(state.get("train_seconds", 0.0))

    def save(self, path: str | os.PathLike, **extra) -> None:
        """Atomic ``torch.save`` of :meth:`state_dict` plus ``extra`` entries."""
        _atomic_save(Path(path), {**self.state_dict(), **extra})

    @classmethod
    def load(cls, path: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> BatchedLinearTeachers:
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise SpeedError(f"teacher heads {path} do not exist") from None
        except Exception as exc:
            raise SpeedError(f"teacher heads {path} are unreadable ({type(exc).__name__}); delete them to retrain") from None
        if not isinstance(state, dict) or state.get("format") != BATCHED_FORMAT:
            raise SpeedError(f"{path} is not a batched linear teachers file")
        t, d, k = state["weight"].shape
        obj = cls(t, d, k, seed=state["seed"], init_std=0.0, teacher_ids=state["teacher_ids"], dtype=dtype)
        obj._restore(state)
        return obj

    def _read_checkpoint(self, path: Path, fingerprint: str) -> dict | None:
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # truncated or foreign: start over, as train_teachers does for its checkpoints
            return None
        if (not isinstance(state, dict) or state.get("format") != BATCHED_FORMAT
                or state.get("fingerprint") != fingerprint
                or tuple(state["weight"].shape) != tuple(self.weight.shape)):
            return None
        return state

    def _write_checkpoint(self, path: Path, fingerprint: str, opt: torch.optim.Optimizer) -> None:
        _atomic_save(path, {**self.state_dict(), "fingerprint": fingerprint, "optimizer": opt.state_dict()})

    def weights_digest(self) -> str:
        h = hashlib.sha256(self.weight.detach().cpu().numpy().tobytes())
        h.update(self.bias.detach().cpu().numpy().tobytes())
        return h.hexdigest()[:16]


def fingerprint(**parts) -> str:
    """SHA-256 of a JSON description (data digests, config, seed) for checkpoints."""
    clean = {k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v) for k, v in parts.items()}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()


def teacher_checkpoint(cache_dir: str | os.PathLike, features_key: str, splits, config: BatchedConfig,
                       seed: int) -> tuple[str, Path]:
    """(fingerprint, checkpoint path) of the batched teachers of ``splits``' holders on the
    features ``features_key`` trained with ``config`` and ``seed``: any other features, pool, shards,
    recipe or seed gives another checkpoint, so a resumed run never reuses other teachers."""
    fp = fingerprint(features=features_key, pool=splits.pool_indices.tolist()[:20] + [splits.pool_size],
                     shards=[splits.holder_fingerprint(i) for i in range(splits.num_holders)],
                     config=config, seed=seed)
    name = f"{splits.dataset.name}-N{splits.num_holders}-{fp[:16]}.pt"
    return fp, Path(cache_dir) / "batched-teachers" / name


def _atomic_save(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
