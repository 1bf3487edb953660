"""Pipeline-parallel analog training (synchronous GPipe and asynchronous 1F1B) with clock-cycle accounting.

Entry points: :class:`PipelineConfig` (the ``trainer.pipeline`` node), :class:`PipelineExecutor`
(``train_step(x, y)`` replaces forward/backward/step in the trainer loop), :func:`split_stages`.
See :mod:`analogtrain.pipeline.schedule` for the exact semantics and staleness of each schedule and
:mod:`analogtrain.pipeline.clock` for the cycle model.
"""

from analogtrain.pipeline.config import (
    PIPELINE_MODES,
    PipelineConfig,
    pipeline_from_config,
    validate_pipeline,
)

__all__ = ["PIPELINE_MODES", "PipelineConfig", "PipelineExecutor", "StepOutput", "pipeline_from_config",
           "validate_pipeline", "split_stages", "layer_chain"]


def __getattr__(name):  # torch-heavy parts load lazily so the config schema can import this package cheaply
    if name in ("PipelineExecutor", "StepOutput", "Event"):
        from analogtrain.pipeline import executor

        return getattr(executor, name)
    if name in ("split_stages", "layer_chain"):
        from analogtrain.pipeline import stages

        return getattr(stages, name)
    raise AttributeError(name)
