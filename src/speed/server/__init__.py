"""The honest-but-curious aggregation server: ciphertexts and evaluation keys only.

Nothing under ``speed.server`` imports ``speed.owner`` or constructs a concrete
``Client``/``Keys``; ``tests/test_key_model.py`` checks it.
"""

from speed.server.aggregator import AggregationServer

__all__ = ["AggregationServer"]
