"""Training loop, evaluation, checkpoint/auto-resume and end-of-run reports."""

from analogtrain.engine.trainer import Trainer, TrainingDiverged, TrainState, lr_factor

__all__ = ["Trainer", "TrainingDiverged", "TrainState", "lr_factor"]
