"""The student: a model trained on the queried points and their aggregated labels.

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

import numpy as np
import torch
from torch import nn

from speed.errors import InputError
from speed.learning.loop import TrainConfig, check_xy, derive_seed, torch_threads, train_loop
from speed.learning.models import build_model, default_model
from speed.learning.splits import LabelledQueries

__all__ = ["STUDENT_CONFIG", "STUDENT_METHODS", "fit_student", "student_config", "train_student"]

#: Student training per dataset (weak augmentation on; semi-supervised uses the same).
STUDENT_CONFIG: dict[str, TrainConfig] = {
    "digits": TrainConfig(steps=1000, batch_size=32, lr=3e-3, optimizer="adam", augment=True),
    "mnist": TrainConfig(steps=3000, batch_size=64, lr=1e-3, optimizer="adam", augment=True),
    "fashion-mnist": TrainConfig(steps=3000, batch_size=64, lr=1e-3, optimizer="adam", augment=True),
    "svhn": TrainConfig(steps=3000, batch_size=64, lr=1e-3, optimizer="adam", augment=True),
    "cifar10": TrainConfig(steps=3000, batch_size=64, lr=1e-3, optimizer="adam", augment=True),
}


def student_config(dataset_name: str) -> TrainConfig:
    return STUDENT_CONFIG.get(dataset_name, STUDENT_CONFIG["mnist"])


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
    left-right mirrors to both augmentations (for classes that a mirror keeps: clothes,
    objects; never digits).
    """
    if method not in STUDENT_METHODS:
        raise InputError(f"method must be one of {', '.join(STUDENT_METHODS)}, got {method!r}")
    x_labelled = np.asarray(x_labelled)
    y_labelled = np.asarray(y_labelled)
    check_xy(x_labelled, y_labelled)
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
        return train_loop(model, x_labelled, y_labelled, cfg, derive_seed(seed, 11), x_unlabelled=x_u,
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
