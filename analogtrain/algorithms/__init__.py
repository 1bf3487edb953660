"""Training algorithms; importing this package registers all of them (see ``base.ALGORITHMS``)."""

from analogtrain.algorithms import digital  # noqa: F401
from analogtrain.algorithms.base import ALGORITHMS, Algorithm, build_algorithm, register_algorithm

__all__ = ["ALGORITHMS", "Algorithm", "build_algorithm", "register_algorithm"]
from analogtrain.algorithms import sgd  # noqa: E402,F401  (algo=sgd; analog machinery in algorithms.analog)

# Tiki-Taka family (tt, ttv2, cttv2, agad): importing registers them
from analogtrain.algorithms import agad, cttv2, tt, ttv2  # noqa: E402,F401
