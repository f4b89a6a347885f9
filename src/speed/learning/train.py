"""The names of the former training module, for callers that import them from here.

Training is split by concern: :mod:`speed.learning.loop` (the training loop, :class:`TrainConfig`,
seeds and threads), :mod:`speed.learning.augment`, :mod:`speed.learning.inference` (predictions and
accuracy), :mod:`speed.learning.checkpoints`, :mod:`speed.learning.teachers` (teachers, in parallel
and resumable, and their votes) and :mod:`speed.learning.student`.  Nothing in the package imports
this module: import from those.
"""

from speed.learning.augment import random_flip, random_shift, strong_augment, weak_augment
from speed.learning.checkpoints import CHECKPOINT_FORMAT, checkpoint_path
from speed.learning.inference import accuracy, predict, predict_proba
from speed.learning.loop import TrainConfig, derive_seed, torch_threads, train_model
from speed.learning.student import STUDENT_CONFIG, STUDENT_METHODS, fit_student, student_config, train_student
from speed.learning.teachers import (
    TEACHER_CONFIG,
    TeacherEnsemble,
    plurality,
    teacher_config,
    teacher_votes,
    train_teachers,
    vote_counts,
)

__all__ = [
    "CHECKPOINT_FORMAT", "STUDENT_CONFIG", "STUDENT_METHODS", "TEACHER_CONFIG", "TeacherEnsemble", "TrainConfig",
    "accuracy", "checkpoint_path", "derive_seed", "fit_student", "plurality", "predict", "predict_proba",
    "random_flip", "random_shift", "strong_augment", "student_config", "teacher_config", "teacher_votes",
    "torch_threads", "train_model", "train_student", "train_teachers", "vote_counts", "weak_augment",
]
