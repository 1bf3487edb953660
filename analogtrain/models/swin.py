"""``model=swin``: a timm Swin transformer sized for the data set (presets ``swin_tiny32``, ``swin_224``).

Geometry. The patch embedding cuts the ``img x img`` input into ``(img/patch)^2`` tokens; stage s works on
a ``g_s x g_s`` token grid with ``g_s = img / patch / 2**s`` (patch merging halves it between stages) and
attends inside ``window x window`` windows. A grid must be a multiple of the window, or at most the
window (then the window is the whole grid and there is no shift: the original Swin rule). timm pads or
clamps other combinations silently; this builder refuses them with a ConfigError instead.

=================  ===========  =====  ======  =====  =============  =============  =========
config option      img          patch  window  embed  depths         heads          params*
=================  ===========  =====  ======  =====  =============  =============  =========
``swin``           data (32)    2      4       48     2, 2           3, 6           0.30 M
``swin_tiny32``    data (32)    2      4       96     2, 2, 6, 2     3, 6, 12, 24   27.5 M
``swin_224``       224          4      7       96     2, 2, 6, 2     3, 6, 12, 24   27.5 M
=================  ===========  =====  ======  =====  =============  =============  =========

(*) with 10 classes. ``swin_224`` is timm's ``swin_tiny_patch4_window7_224``, the architecture of the
public ImageNet checkpoints (load one with ``init.checkpoint=/path/to/file``; feed it with
``data.resize=224``).

Analog mapping (done later by the algorithm's ``convert_to_analog``): every ``nn.Linear`` (``qkv``,
``proj``, ``fc1``, ``fc2``, ``downsample.reduction``, ``head.fc``) and the patch-embedding ``Conv2d``,
except modules matched by ``model.keep_digital`` (default ``[patch_embed]``). timm's Swin computes
attention with its own Linear layers (not ``nn.MultiheadAttention``), so qkv/proj really are analog.
"""

from __future__ import annotations

import logging

import torch

from analogtrain.config.errors import ConfigError
from analogtrain.models.registry import register_model

log = logging.getLogger(__name__)

__all__ = ["build_swin", "stage_grids", "swin_kwargs"]


def stage_grids(img: int, patch: int, n_stages: int) -> list[int]:
    """Token-grid side of every stage: ``[img/patch, img/patch/2, ...]`` (n_stages entries)."""
    return [img // patch // (2 ** s) for s in range(n_stages)]


def swin_kwargs(cfg, input_shape, num_outputs) -> dict:
    """Validated ``timm.create_model`` keyword arguments of a ``SwinConfig`` node for inputs of
    ``input_shape`` (C, H, W) and ``num_outputs`` classes. Raises ConfigError naming the key."""
    if len(input_shape) != 3:
        raise ConfigError("model.name", f"swin needs image inputs (C, H, W), got shape {tuple(input_shape)}; "
                          "use model=mlp for vector data")
    c, h, w = input_shape
    img = int(cfg.img_size or h)
    if h != w or img != h:
        raise ConfigError("model.img_size", f"{img} does not match the {h}x{w} inputs; set model.img_size=null "
                          f"or resize the data (data.pad_to={img} or data.resize={img})")
    patch, window = int(cfg.patch_size), int(cfg.window_size)
    if img % patch:
        raise ConfigError("model.patch_size", f"{patch} must divide the image size {img}")
    depths, heads = [int(d) for d in cfg.depths], [int(x) for x in cfg.num_heads]
    if len(depths) != len(heads):
        raise ConfigError("model.num_heads", f"needs one entry per stage (len(depths) = {len(depths)}), "
                          f"got {heads}")
    grids = stage_grids(img, patch, len(depths))
    for s, g in enumerate(grids):
        if g < 1 or (s > 0 and (img // patch) % (2 ** s)):
            raise ConfigError("model.depths", f"{len(depths)} stages need img_size/patch_size = {img // patch} "
                              f"to halve {len(depths) - 1} times; use fewer stages or a larger image")
        if g > window and g % window:
            raise ConfigError("model.window_size", f"{window} does not tile the {g}x{g} token grid of stage {s} "
                              f"(grids {grids}); allowed: a divisor of every grid larger than it")
    dim = int(cfg.embed_dim)
    for s, nh in enumerate(heads):
        if (dim * 2 ** s) % nh:
            raise ConfigError(f"model.num_heads[{s}]", f"{nh} does not divide the stage width {dim * 2 ** s}")
    return dict(pretrained=False, img_size=img, patch_size=patch, window_size=window, embed_dim=dim,
                depths=tuple(depths), num_heads=tuple(heads), mlp_ratio=float(cfg.mlp_ratio),
                drop_path_rate=float(cfg.drop_path_rate), in_chans=int(c), num_classes=int(num_outputs))


@register_model("swin", tiny={"embed_dim": 8, "depths": [1], "num_heads": [2], "window_size": 2})
def build_swin(cfg, input_shape, num_outputs) -> torch.nn.Module:
    """timm ``cfg.variant`` with the sizes of ``cfg``: x (B, C, img, img) -> logits (B, num_outputs).

    ``cfg.pretrained_path`` (optional) is loaded like ``init.checkpoint`` (timm key mapping, shape
    mismatches re-initialised and reported)."""
    import timm

    kwargs = swin_kwargs(cfg, input_shape, num_outputs)
    try:
        model = timm.create_model(cfg.variant, **kwargs)
    except (RuntimeError, TypeError) as e:  # unknown name; a timm model without Swin's keywords (ViT, ResNet)
        raise ConfigError("model.variant", f"'{cfg.variant}': {e}; use a timm Swin architecture such as "
                          "swin_tiny_patch4_window7_224") from e
    if type(model).__name__ != "SwinTransformer":  # (the pipeline split and the checkpoint mapping know v1)
        raise ConfigError("model.variant", f"'{cfg.variant}' builds a timm {type(model).__name__}; "
                          "model=swin takes timm's SwinTransformer (swin_* variants, e.g. "
                          "swin_tiny_patch4_window7_224)")
    if cfg.get("pretrained_path"):
        from analogtrain.engine.transfer import load_pretrained

        report = load_pretrained(model, cfg.pretrained_path, key="model.pretrained_path")
        log.info("model.pretrained_path: %s", report.summary())
    return model
