"""numba kernels. They import nothing of the project; only the public functions are used elsewhere."""

from .rank import positive_ranks

__all__ = ["positive_ranks"]
