"""SPEED: Secure, PrivatE, and Efficient Deep learning.

Private collaborative learning: data holders' teachers vote on public queries,
each vote carries a share of distributed differential-privacy noise and is
encrypted (TFHE, concrete-python); an honest-but-curious server sums the votes
and computes the argmax homomorphically; the model owner decrypts one label per
query and trains a student.  Reference: Grivet Sébert et al., "SPEED: Secure,
PrivatE, and Efficient Deep learning", Machine Learning 110 (2021).
"""

__version__ = "0.1.0"

# concrete-python's atexit hook would turn every exit status into 0 once a circuit ran.
from speed.exitstatus import install as _install_exit_status_guard  # noqa: E402

_install_exit_status_guard()
