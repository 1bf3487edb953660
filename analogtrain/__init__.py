"""analogtrain: train neural networks on simulated analog in-memory computing hardware.

Entry points: the ``analogtrain`` command (:mod:`analogtrain.cli`) and :func:`analogtrain.run.train`.
"""

__version__ = "0.1.0"
