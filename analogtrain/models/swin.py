"""``model=swin``: a timm Swin transformer sized for small images.

The CIFAR-sized default (img 32, patch 2, window 4, embed 48, depths (2, 2)) gives token grids 16x16 and
8x8, both divisible by the window. timm is imported lazily (it is slow to import). All Linear layers
(qkv, proj, MLP, head) are what ``convert_to_analog`` later turns analog; issue "Swin-ViT transfer
learning" adds options to keep chosen layers digital.
"""

from __future__ import annotations

import logging

import torch

from analogtrain.config.errors import ConfigError
from analogtrain.models.registry import register_model

log = logging.getLogger(__name__)


@register_model("swin", tiny={"embed_dim": 8, "depths": [1], "num_heads": [2], "window_size": 2})
def build_swin(cfg, input_shape, num_outputs) -> torch.nn.Module:
    import timm

    if len(input_shape) != 3:
        raise ConfigError("model.name", f"swin needs image inputs (C, H, W), got shape {tuple(input_shape)}")
    c, h, w = input_shape
    img = int(cfg.img_size or h)
    if h != w or img != h:
        raise ConfigError("model.img_size", f"{img} does not match the {h}x{w} inputs; set model.img_size=null "
                          f"or data.pad_to={img}")
    if img % cfg.patch_size:
        raise ConfigError("model.patch_size", f"{cfg.patch_size} must divide the image size {img}")
    if len(cfg.depths) != len(cfg.num_heads):
        raise ConfigError("model.num_heads", f"needs one entry per stage (len(depths) = {len(cfg.depths)})")
    model = timm.create_model(
        cfg.variant, pretrained=False, img_size=img, patch_size=int(cfg.patch_size),
        window_size=int(cfg.window_size), embed_dim=int(cfg.embed_dim), depths=tuple(cfg.depths),
        num_heads=tuple(cfg.num_heads), mlp_ratio=float(cfg.mlp_ratio), drop_path_rate=float(cfg.drop_path_rate),
        in_chans=c, num_classes=num_outputs,
    )
    if cfg.pretrained_path:
        state = torch.load(cfg.pretrained_path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        missing, unexpected = model.load_state_dict(state, strict=False)
        log.info("loaded %s (%d missing, %d unexpected keys)", cfg.pretrained_path, len(missing), len(unexpected))
    return model
