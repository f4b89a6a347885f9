"""A data holder: its teacher, its vote, its noise share, its encryption."""

from speed.holder.holder import DataHolder, one_hot_votes

__all__ = ["DataHolder", "one_hot_votes"]
