"""Training: teachers (one per holder, checkpointed), votes, and the student.

Optimisers (``TrainConfig.optimizer``):

* ``"sgd"``  plain SGD (optional momentum), the paper's choice for MNIST
  (5,000 steps, batch 64, lr 0.08; docs/spec.md §6).
* ``"adam"`` Adam, our default for the small digits models and for the student.

Minibatches are drawn epoch by epoch from a seeded permutation (every example once per
epoch); a batch size at least the shard size uses the whole shard each step.

Determinism: given a seed, model initialisation, batch order, augmentation and dropout
are reproducible (the global torch RNG is forked, not consumed).  Bitwise equality
additionally needs the same torch build, device and thread count.

Semi-supervised student (``method="semi-supervised"``): the paper trained its student
with improved-GAN feature matching (Salimans et al. 2016).  We use *FixMatch-lite*
(Sohn et al. 2020), a simpler and well-known alternative: each step adds to the
supervised loss on a labelled batch (weakly augmented: random shift) a loss on an
unlabelled batch ``unlabelled_ratio`` times larger: the model's prediction on a weakly
augmented view becomes a pseudo-label when its confidence is at least ``threshold``,
and the model is trained to predict it on a strongly augmented view (larger shift,
brightness/contrast jitter, Gaussian noise, cutout).  The unsupervised weight ramps up
linearly over the first ``rampup`` fraction of the steps.  The supervised baseline uses
the same weak augmentation, so any gain comes from the unlabelled data.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import multiprocessing
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speed.errors import InputError
from speed.learning.datasets import Dataset, LabelledQueries, Splits
from speed.learning.models import build_model, default_model

CHECKPOINT_FORMAT = 1


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


#: Teacher training per dataset.  MNIST: the paper's settings (docs/spec.md §6).  Fashion-MNIST (not in
#: the paper): chosen with ``benchmarks/teacher_recipes.py`` on 240-image shards, where the paper's
#: SGD recipe at an affordable 150 steps gave 63 % per teacher and this one 77 % in 36 s of one
#: CPU thread.  SVHN: the paper gives 2,000 steps but no learning rate; Adam is our (untested on
#: SVHN) choice.
TEACHER_CONFIG: dict[str, TrainConfig] = {
    "digits": TrainConfig(steps=150, batch_size=32, lr=3e-3, optimizer="adam", augment=True),
    "mnist": TrainConfig(steps=5000, batch_size=64, lr=0.08, optimizer="sgd"),
    "fashion-mnist": TrainConfig(steps=600, batch_size=64, lr=1e-3, optimizer="adam", augment=True,
                                 schedule="cosine"),
    "svhn": TrainConfig(steps=2000, batch_size=64, lr=1e-3, optimizer="adam"),
    "cifar10": TrainConfig(steps=2000, batch_size=64, lr=1e-3, optimizer="adam"),
}

#: Student training per dataset (weak augmentation on; semi-supervised uses the same).
STUDENT_CONFIG: dict[str, TrainConfig] = {
    "digits": TrainConfig(steps=1000, batch_size=32, lr=3e-3, optimizer="adam", augment=True),
    "mnist": TrainConfig(steps=3000, batch_size=64, lr=1e-3, optimizer="adam", augment=True),
    "fashion-mnist": TrainConfig(steps=3000, batch_size=64, lr=1e-3, optimizer="adam", augment=True),
    "svhn": TrainConfig(steps=3000, batch_size=64, lr=1e-3, optimizer="adam", augment=True),
    "cifar10": TrainConfig(steps=3000, batch_size=64, lr=1e-3, optimizer="adam", augment=True),
}


def teacher_config(dataset_name: str) -> TrainConfig:
    return TEACHER_CONFIG.get(dataset_name, TEACHER_CONFIG["mnist"])


def student_config(dataset_name: str) -> TrainConfig:
    return STUDENT_CONFIG.get(dataset_name, STUDENT_CONFIG["mnist"])


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


# ------------------------------------------------------------------ augmentation


def _max_shift(h: int) -> int:
    return max(1, h // 14)


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]^2 (zero fill)."""
    if max_shift <= 0 or len(x) == 0:
        return x
    n, _, h, w = x.shape
    d = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen, device=x.device)
    padded = F.pad(x, (max_shift,) * 4)
    rows = (torch.arange(h, device=x.device)[None, :] + max_shift - d[:, :1])  # (n, h)
    cols = (torch.arange(w, device=x.device)[None, :] + max_shift - d[:, 1:])  # (n, w)
    idx_r = rows[:, None, :, None].expand(n, x.shape[1], h, padded.shape[3])
    out = torch.gather(padded, 2, idx_r)
    idx_c = cols[:, None, None, :].expand(n, x.shape[1], h, w)
    return torch.gather(out, 3, idx_c)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2 (for classes that a mirror keeps:
    clothes, objects; never digits)."""
    if len(x) == 0:
        return x
    flip = torch.rand(len(x), generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def weak_augment(x: torch.Tensor, gen: torch.Generator, flip: bool = False) -> torch.Tensor:
    """Random shift of up to max(1, H // 14) pixels, and a random mirror with ``flip``."""
    x = random_shift(x, _max_shift(x.shape[2]), gen)
    return random_flip(x, gen) if flip else x


def strong_augment(x: torch.Tensor, gen: torch.Generator, flip: bool = False) -> torch.Tensor:
    """Larger shift (and a random mirror with ``flip``), brightness/contrast jitter, Gaussian
    noise and a cutout square."""
    n, _, h, w = x.shape
    if n == 0:
        return x
    x = random_shift(x, 2 * _max_shift(h), gen)
    if flip:
        x = random_flip(x, gen)
    dev = x.device
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=gen, device=dev)
    brightness = 0.2 * (torch.rand(n, 1, 1, 1, generator=gen, device=dev) - 0.5)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + brightness
    x = x + 0.1 * torch.randn(x.shape, generator=gen, device=dev)
    size = max(1, h // 4)
    r = torch.randint(0, h - size + 1, (n,), generator=gen, device=dev)
    c = torch.randint(0, w - size + 1, (n,), generator=gen, device=dev)
    ar, ac = torch.arange(h, device=dev), torch.arange(w, device=dev)
    in_r = (ar[None, :] >= r[:, None]) & (ar[None, :] < r[:, None] + size)
    in_c = (ac[None, :] >= c[:, None]) & (ac[None, :] < c[:, None] + size)
    keep = ~(in_r[:, :, None] & in_c[:, None, :])
    return (x * keep[:, None].to(x.dtype)).clamp(0.0, 1.0)


# ----------------------------------------------------------------------- training


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


def _check_xy(x: np.ndarray, y: np.ndarray) -> None:
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
    return _train(model, x, y, cfg, seed, flip=flip, device=device)


def _train(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, seed: int, *,
           x_unlabelled: np.ndarray | None = None, threshold: float = 0.95, unlabelled_ratio: int = 3,
           unlabelled_weight: float = 1.0, rampup: float = 0.2, ema: float | None = None,
           flip: bool = False, device: str | torch.device | None = None) -> nn.Module:
    _check_xy(x, y)
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


# ----------------------------------------------------------------------- teachers


@dataclass(eq=False)
class TeacherEnsemble:
    """The holders' trained teachers, in holder order.

    ``trained`` / ``loaded`` list the holder indices trained by the call that built the
    ensemble and those restored from checkpoints; ``train_seconds[i]`` is teacher i's
    training time (as recorded in its checkpoint when loaded).
    """

    models: list[nn.Module]
    model_name: str
    config: TrainConfig
    trained: list[int] = field(default_factory=list)
    loaded: list[int] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.models)

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.models)

    def __getitem__(self, i: int) -> nn.Module:
        return self.models[i]

    def votes(self, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
        return teacher_votes(self.models, x, batch_size)

    def accuracies(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (self.votes(x) == np.asarray(y)[None, :]).mean(axis=1)


def checkpoint_path(checkpoint_dir: str | os.PathLike, holder: int) -> Path:
    return Path(checkpoint_dir) / f"teacher-{holder:04d}.pt"


def _fingerprint(splits: Splits, holder: int, model_name: str, cfg: TrainConfig, seed: int) -> str:
    d = splits.dataset
    blob = json.dumps({
        "format": CHECKPOINT_FORMAT, "dataset": d.name, "in_shape": list(d.in_shape), "classes": d.num_classes,
        "model": model_name, "config": asdict(cfg), "seed": seed, "holder": holder,
        "shard": splits.holder_fingerprint(holder),
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    """The checkpoint's contents if it exists, is readable and matches ``fingerprint``."""
    if not path.is_file():
        return None
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated or foreign file: retrain
        return None
    if not isinstance(ck, dict) or ck.get("fingerprint") != fingerprint:
        return None
    return ck


def _save_checkpoint(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: a killed run never leaves a half-written checkpoint


def _train_teacher_job(job: dict) -> dict:
    """Train one teacher (runs in the parent or in a worker process)."""
    if job.get("threads") is not None:
        torch.set_num_threads(job["threads"])
    start = time.perf_counter()
    model = build_model(job["model_name"], job["in_shape"], job["num_classes"], seed=derive_seed(job["seed"], 0))
    _train(model, job["x"], job["y"], job["config"], derive_seed(job["seed"], 1), device=job["device"])
    seconds = time.perf_counter() - start
    payload = {
        "format": CHECKPOINT_FORMAT, "fingerprint": job["fingerprint"], "holder": job["holder"],
        "model_name": job["model_name"], "in_shape": list(job["in_shape"]), "num_classes": job["num_classes"],
        "train_seconds": seconds, "state_dict": model.state_dict(),
    }
    if job["path"] is not None:
        _save_checkpoint(Path(job["path"]), payload)
    return payload


def train_teachers(dataset: Dataset, splits: Splits, model_name: str | None = None, steps: int | None = None,
                   batch_size: int | None = None, lr: float | None = None, optimizer: str | None = None, *,
                   config: TrainConfig | None = None, seed: int = 0,
                   checkpoint_dir: str | os.PathLike | None = None, progress: bool = True,
                   num_threads: int = 1, workers: int | None = None,
                   device: str | torch.device | None = None) -> TeacherEnsemble:
    """Train one teacher per holder shard of ``splits``.

    Settings: ``config`` (default: :data:`TEACHER_CONFIG` for the dataset), overridden
    field by field by ``steps``, ``batch_size``, ``lr`` and ``optimizer``; model
    ``model_name`` (default per dataset).  Teacher i's seed is derived from
    ``(seed, i)``.

    With ``checkpoint_dir``, each teacher is saved to ``teacher-NNNN.pt`` as soon as it
    is trained (atomic write); a later call loads every checkpoint whose fingerprint
    (dataset, shard, model, config, seed) matches and trains only the others, so a
    killed run resumes where it stopped.  A stale or corrupt checkpoint is retrained
    and overwritten.

    Cores: ``workers`` teachers are trained at once, each in its own process (spawned)
    with ``num_threads`` torch threads; the default is one worker per CPU, one thread
    each.  ``workers=1`` trains holder by holder in this process.  Processes rather than
    intra-op threads because on a shared 2-core machine two torch threads were up to 9x
    *slower* than one (thread oversubscription), and small models gain nothing from
    threads.  If worker processes cannot start (e.g. a script read from stdin), the
    remaining teachers are trained in this process.
    """
    d = splits.dataset
    if dataset is not d and (dataset.name != d.name or len(dataset.y_train) != len(d.y_train)):
        raise InputError("splits were made from another dataset")
    model_name = model_name or default_model(d.name)
    cfg = config or teacher_config(d.name)
    overrides = {k: v for k, v in dict(steps=steps, batch_size=batch_size, lr=lr, optimizer=optimizer).items()
                 if v is not None}
    cfg = replace(cfg, **overrides)
    build_model(model_name, d.in_shape, d.num_classes)  # validate the name early
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1 or num_threads < 1:
        raise InputError(f"workers and num_threads must be >= 1, got {workers} and {num_threads}")
    n = splits.num_holders

    models: list[nn.Module | None] = [None] * n
    seconds = [0.0] * n
    loaded: list[int] = []
    todo: list[tuple[int, str, Path | None]] = []
    for i in range(n):
        fp = _fingerprint(splits, i, model_name, cfg, seed)
        path = checkpoint_path(checkpoint_dir, i) if checkpoint_dir is not None else None
        ck = _load_checkpoint(path, fp) if path is not None else None
        if ck is not None:
            m = build_model(model_name, d.in_shape, d.num_classes)
            m.load_state_dict(ck["state_dict"])
            models[i] = m.eval()
            seconds[i] = float(ck.get("train_seconds", 0.0))
            loaded.append(i)
            continue
        todo.append((i, fp, path))

    def job(i: int, fp: str, path: Path | None, threads: int | None) -> dict:
        x, y = splits.holder_data(i)  # built when submitted: never all shards copied at once
        return {
            "holder": i, "x": x, "y": y, "model_name": model_name, "in_shape": d.in_shape,
            "num_classes": d.num_classes, "config": cfg, "seed": derive_seed(seed, i), "fingerprint": fp,
            "path": str(path) if path is not None else None, "device": device, "threads": threads,
        }

    def accept(payload: dict) -> None:
        i = payload["holder"]
        m = build_model(model_name, d.in_shape, d.num_classes)
        m.load_state_dict(payload["state_dict"])
        models[i] = m.eval()
        seconds[i] = payload["train_seconds"]

    from tqdm.auto import tqdm

    bar = tqdm(total=n, initial=len(loaded), desc=f"teachers ({model_name})", unit="teacher",
               disable=not progress, dynamic_ncols=True)
    if loaded:
        bar.set_postfix(loaded=len(loaded))
    try:
        pending = list(todo)
        if workers > 1 and len(todo) > 1:
            ctx = multiprocessing.get_context("spawn")
            try:
                with cf.ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=ctx) as pool:
                    queue, running = list(todo), set()
                    while queue or running:
                        while queue and len(running) < workers:
                            running.add(pool.submit(_train_teacher_job, job(*queue.pop(0), num_threads)))
                        done, running = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                        for fut in done:
                            payload = fut.result()
                            accept(payload)
                            pending = [t for t in pending if t[0] != payload["holder"]]
                            bar.update(1)
            except cf.process.BrokenProcessPool:
                warnings.warn("teacher worker processes failed to run; training the rest in this process",
                              RuntimeWarning, stacklevel=2)
        with torch_threads(num_threads):
            for t in pending:
                accept(_train_teacher_job(job(*t, None)))
                bar.update(1)
    finally:
        bar.close()
    return TeacherEnsemble(models, model_name, cfg, trained=[t[0] for t in todo], loaded=loaded,
                           train_seconds=seconds)  # type: ignore[arg-type]


def teacher_votes(teachers: Sequence[nn.Module] | TeacherEnsemble, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Each teacher's predicted label on each point: int64 array (num_teachers, n)."""
    models = teachers.models if isinstance(teachers, TeacherEnsemble) else list(teachers)
    if not models:
        raise InputError("no teachers")
    return np.stack([predict(m, x, batch_size) for m in models])


def vote_counts(votes: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-query vote histogram: int64 (n, num_classes) from votes (num_teachers, n)."""
    votes = np.asarray(votes)
    if votes.ndim != 2 or not np.issubdtype(votes.dtype, np.integer):
        raise InputError(f"votes must be an integer array (num_teachers, n), got {votes.dtype} {votes.shape}")
    if votes.size and (votes.min() < 0 or votes.max() >= num_classes):
        raise InputError(f"votes must be class indices in 0..{num_classes - 1}")
    n = votes.shape[1]
    flat = (np.arange(n)[None, :] * num_classes + votes).ravel()
    return np.bincount(flat, minlength=n * num_classes).reshape(n, num_classes).astype(np.int64)


def plurality(counts: np.ndarray) -> np.ndarray:
    """Argmax of each row of a vote histogram; ties go to the lowest class index."""
    return np.asarray(counts).argmax(axis=1).astype(np.int64)


# ------------------------------------------------------------------------ student


STUDENT_METHODS = ("supervised", "semi-supervised")


def train_student(x_labelled: np.ndarray, y_labelled: np.ndarray, *, num_classes: int,
                  model_name: str = "digits-cnn", config: TrainConfig | None = None, seed: int = 0,
                  x_unlabelled: np.ndarray | None = None, method: str = "supervised",
                  threshold: float = 0.7, unlabelled_ratio: int = 3, unlabelled_weight: float = 1.0,
                  rampup: float = 0.2, ema: float | None = 0.99, flip: bool = False,
                  num_threads: int | None = None, device: str | torch.device | None = None) -> nn.Module:
    """Train the student on labelled queries (and, semi-supervised, on unlabelled pool points).

    ``method="supervised"``: cross-entropy on ``(x_labelled, y_labelled)``.
    ``method="semi-supervised"``: FixMatch-lite (module docstring) with ``x_unlabelled``
    (the labelled images are added to it, as in FixMatch).  ``config`` defaults to
    :data:`STUDENT_CONFIG` ``["digits"]``-like settings for the model.  ``flip`` adds random
    left-right mirrors to both augmentations (``speed.learning.datasets.MIRROR_INVARIANT``).
    """
    if method not in STUDENT_METHODS:
        raise InputError(f"method must be one of {', '.join(STUDENT_METHODS)}, got {method!r}")
    x_labelled = np.asarray(x_labelled)
    y_labelled = np.asarray(y_labelled)
    _check_xy(x_labelled, y_labelled)
    if y_labelled.min() < 0 or y_labelled.max() >= num_classes:
        raise InputError(f"labels must be in 0..{num_classes - 1}")
    if method == "semi-supervised":
        if x_unlabelled is None or len(x_unlabelled) == 0:
            raise InputError("semi-supervised training needs unlabelled images (x_unlabelled)")
        if tuple(x_unlabelled.shape[1:]) != tuple(x_labelled.shape[1:]):
            raise InputError("labelled and unlabelled images differ in shape")
        if not 0.0 < threshold <= 1.0:
            raise InputError(f"threshold must be in (0, 1], got {threshold}")
        x_u = np.concatenate([x_unlabelled, x_labelled])
    else:
        x_u = None
    cfg = config or STUDENT_CONFIG["digits"]
    model = build_model(model_name, tuple(x_labelled.shape[1:]), num_classes, seed=derive_seed(seed, 10))
    with torch_threads(num_threads):
        return _train(model, x_labelled, y_labelled, cfg, derive_seed(seed, 11), x_unlabelled=x_u,
                      threshold=threshold, unlabelled_ratio=unlabelled_ratio,
                      unlabelled_weight=unlabelled_weight, rampup=rampup, ema=ema, flip=flip, device=device)


def fit_student(labelled: LabelledQueries, *, method: str = "supervised", model_name: str | None = None,
                config: TrainConfig | None = None, seed: int = 0, **kwargs) -> nn.Module:
    """Train the student on exactly the queried points and their aggregated labels.

    Semi-supervised uses the pool points that were not queried as unlabelled data.  The
    dataset's default model and student config apply unless given.
    """
    d = labelled.queries.splits.dataset
    return train_student(
        labelled.x, labelled.labels, num_classes=d.num_classes, model_name=model_name or default_model(d.name),
        config=config or student_config(d.name), seed=seed,
        x_unlabelled=labelled.unlabelled_x if method == "semi-supervised" else None, method=method, **kwargs,
    )

