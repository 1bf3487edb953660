"""Training algorithms; importing this package registers all of them (see ``base.ALGORITHMS``)."""

from analogtrain.algorithms import digital  # noqa: F401
from analogtrain.algorithms.base import ALGORITHMS, Algorithm, build_algorithm, register_algorithm

__all__ = ["ALGORITHMS", "Algorithm", "build_algorithm", "register_algorithm"]
