"""Errors that the CLI turns into a one-line message (no traceback).

Every error raised on bad input derives from :class:`SpeedError`.  The classes
also derive from ``ValueError`` where the problem is a bad value, so pure
functions keep the usual Python contract.
"""


class SpeedError(Exception):
    """Base class: a problem the user can fix, reported as one line."""


class InputError(SpeedError, ValueError):
    """A bad argument: wrong class count, a non-one-hot vote, out-of-range parameter."""


class CiphertextError(SpeedError, ValueError):
    """Bytes that are not a valid ciphertext of this run's keyset (corrupted or foreign)."""


class PadReuseError(SpeedError):
    """A one-time encryption of zero (pad) was presented twice."""


class BudgetExhaustedError(SpeedError):
    """Answering one more query would exceed the privacy budget."""


class DatasetMissingError(SpeedError, FileNotFoundError):
    """A dataset's files are not where the user said they are."""


class SecretMaterialError(SpeedError):
    """Secret-key material reached a party that must never hold it."""
