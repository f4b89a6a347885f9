"""The concrete-python circuits: holder ``encode`` and server ``aggregate`` (sum + exact argmax).

Only the owner compiles and generates keys; the compiled server program travels as bytes.
"""

from speed.crypto.spec import CircuitSpec, reference_argmax

__all__ = ["CircuitSpec", "reference_argmax"]
