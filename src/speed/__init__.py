"""SPEED: Secure, PrivatE, and Efficient Deep learning.

Private collaborative learning: data holders' teachers vote on public queries,
each vote carries a share of distributed differential-privacy noise and is
encrypted (TFHE, concrete-python); an honest-but-curious server sums the votes
and computes the argmax homomorphically; the model owner decrypts one label per
query and trains a student.  Reference: Grivet Sébert et al., "SPEED: Secure,
PrivatE, and Efficient Deep learning", Machine Learning 110 (2021).
"""

__version__ = "0.1.0"
