"""Model registry: mlp (default), linear, lenet, swin. ``build_model(cfg.model, input_shape, num_outputs)``."""

from analogtrain.models import lenet, mlp, swin  # noqa: F401  (register the built-in models)
from analogtrain.models.registry import MODELS, ModelEntry, build_model, register_model

__all__ = ["MODELS", "ModelEntry", "build_model", "register_model"]
