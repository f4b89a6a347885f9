"""``speed reproduce``: the paper's experiments end to end, resumable, with a report.

    from speed.reproduce import ReproduceConfig, reproduce
    result = reproduce(ReproduceConfig(dataset="digits", holders=20, queries=(60,), target_epsilon=8,
                                       plaintext_check=True))

See :mod:`speed.reproduce.run` for the stages, :mod:`speed.reproduce.config` for the settings and
``docs/reproduce.md`` for the command.
"""

from speed.reproduce.config import (
    DATASET_DEFAULTS,
    PATE_2017,
    REPRODUCE_DATASETS,
    ReproduceConfig,
    curve_queries,
    machine_info,
)
from speed.reproduce.run import reproduce, summary_rows

__all__ = [
    "DATASET_DEFAULTS", "PATE_2017", "REPRODUCE_DATASETS", "ReproduceConfig", "curve_queries", "machine_info",
    "reproduce", "summary_rows",
]
