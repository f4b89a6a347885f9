"""Learning: datasets, holder partitions, public queries, models, teachers and student.

Typical flow::

    ds = load_dataset("digits")
    splits = make_splits(ds, num_holders=20, num_queries_pool=300, seed=0)
    teachers = train_teachers(ds, splits, checkpoint_dir="ckpt/")
    queries = select_queries(splits, 60, seed=0)
    votes = teacher_votes(teachers, queries.x)            # (N, Q)
    labels = plurality(vote_counts(votes, ds.num_classes))  # or the encrypted noisy argmax
    labelled = queries.label(labels)                        # points and labels stay together
    student = fit_student(labelled, method="semi-supervised")
    accuracy(student, splits.test_x, splits.test_y)
"""

from speed.learning.batched import BatchedConfig, BatchedLinearTeachers, pad_shards
from speed.learning.checkpoints import checkpoint_path
from speed.learning.datasets import DATASET_NAMES, DEFAULT_DATASET, Dataset, load_dataset, read_idx, write_idx
from speed.learning.features import (
    FeatureCacheError,
    FeatureSet,
    ScatteringSpec,
    scattering_features,
    scattering_transform,
)
from speed.learning.inference import accuracy, predict, predict_proba
from speed.learning.loop import TrainConfig, train_model
from speed.learning.models import DEFAULT_MODEL, MODELS, build_model, count_parameters, default_model
from speed.learning.splits import LabelledQueries, Queries, Splits, make_splits, select_queries
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
    "BatchedConfig", "BatchedLinearTeachers", "FeatureCacheError", "FeatureSet", "ScatteringSpec", "pad_shards",
    "scattering_features", "scattering_transform",
    "DATASET_NAMES", "DEFAULT_DATASET", "DEFAULT_MODEL", "MODELS", "STUDENT_CONFIG", "STUDENT_METHODS",
    "TEACHER_CONFIG", "Dataset", "LabelledQueries", "Queries", "Splits", "TeacherEnsemble", "TrainConfig",
    "accuracy", "build_model", "checkpoint_path", "count_parameters", "default_model", "fit_student",
    "load_dataset", "make_splits", "plurality", "predict", "predict_proba", "read_idx", "select_queries",
    "student_config", "teacher_config", "teacher_votes", "train_model", "train_student", "train_teachers",
    "vote_counts", "write_idx",
]
