"""Teachers: one model per holder, trained on its shard (in parallel worker processes, resumable
from checkpoints), and their votes on the queries.

:func:`train_teachers` trains or loads every teacher (:mod:`speed.learning.checkpoints`);
:func:`teacher_votes` gives each teacher's label per query, :func:`vote_counts` the per-query
histogram and :func:`plurality` its noise-free argmax.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from speed.errors import InputError
from speed.learning.checkpoints import CHECKPOINT_FORMAT, checkpoint_path, load_checkpoint, save_checkpoint, teacher_fingerprint
from speed.learning.datasets import Dataset
from speed.learning.inference import predict
from speed.learning.loop import TrainConfig, derive_seed, torch_threads, train_loop
from speed.learning.models import build_model, default_model
from speed.learning.splits import Splits

__all__ = ["TEACHER_CONFIG", "TeacherEnsemble", "plurality", "teacher_config", "teacher_votes", "train_teachers",
           "vote_counts"]

#: Teacher training per dataset.  MNIST: the paper's settings (docs/spec.md §6).  Fashion-MNIST (not in
#: the paper): chosen with ``benchmarks/teacher_recipes.py``, which compares it with the paper's SGD
#: recipe at an affordable number of steps.  SVHN: the paper gives 2,000 steps but no learning rate;
#: Adam is our (untested on SVHN) choice.
TEACHER_CONFIG: dict[str, TrainConfig] = {
    "digits": TrainConfig(steps=150, batch_size=32, lr=3e-3, optimizer="adam", augment=True),
    "mnist": TrainConfig(steps=5000, batch_size=64, lr=0.08, optimizer="sgd"),
    "fashion-mnist": TrainConfig(steps=600, batch_size=64, lr=1e-3, optimizer="adam", augment=True,
                                 schedule="cosine"),
    "svhn": TrainConfig(steps=2000, batch_size=64, lr=1e-3, optimizer="adam"),
    "cifar10": TrainConfig(steps=2000, batch_size=64, lr=1e-3, optimizer="adam"),
}


def teacher_config(dataset_name: str) -> TrainConfig:
    return TEACHER_CONFIG.get(dataset_name, TEACHER_CONFIG["mnist"])


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


def _train_teacher_job(job: dict) -> dict:
    """Train one teacher (runs in the parent or in a worker process)."""
    if job.get("threads") is not None:
        torch.set_num_threads(job["threads"])
    start = time.perf_counter()
    model = build_model(job["model_name"], job["in_shape"], job["num_classes"], seed=derive_seed(job["seed"], 0))
    train_loop(model, job["x"], job["y"], job["config"], derive_seed(job["seed"], 1), device=job["device"])
    seconds = time.perf_counter() - start
    payload = {
        "format": CHECKPOINT_FORMAT, "fingerprint": job["fingerprint"], "holder": job["holder"],
        "model_name": job["model_name"], "in_shape": list(job["in_shape"]), "num_classes": job["num_classes"],
        "train_seconds": seconds, "state_dict": model.state_dict(),
    }
    if job["path"] is not None:
        save_checkpoint(Path(job["path"]), payload)
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
    intra-op threads because small models gain nothing from more torch threads, and extra
    threads on a shared machine oversubscribe its cores and slow training down.  If worker
    processes cannot start (e.g. a script read from stdin), the remaining teachers are
    trained in this process.
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
        fp = teacher_fingerprint(splits, i, model_name, cfg, seed)
        path = checkpoint_path(checkpoint_dir, i) if checkpoint_dir is not None else None
        ck = load_checkpoint(path, fp) if path is not None else None
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
