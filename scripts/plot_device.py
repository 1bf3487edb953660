#!/usr/bin/env python
"""Device explorer: draw the pulse response of a device config to a PNG.

Usage (Hydra override syntax, composed from the real ``conf/device`` group)::

    python scripts/plot_device.py device=reram_sb device.skew=0.1 [out=reram_sb.png]
    python scripts/plot_device.py device=softbounds device.asymmetry=0.5 device.n_states=200

Without ``device=`` the product default (softbounds) is drawn; ``out=`` defaults to
``outputs/device_<name>.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> Path:
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    from analogtrain.config.errors import ConfigError
    from analogtrain.devices.plot import device_figure
    from analogtrain.devices.schema import register_configs
    from analogtrain.utils.paths import conf_dir

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return Path()
    out = None
    overrides = []
    name = "softbounds"
    for a in args:
        if a.startswith("out="):
            out = a[len("out="):]
        elif a.startswith("device="):
            name = a.split("=", 1)[1]
        else:
            overrides.append(a)
    register_configs(ConfigStore.instance())
    with initialize_config_dir(config_dir=str(Path(conf_dir()).resolve()), version_base=None):
        cfg = compose(overrides=[f"+device={name}", *overrides])
    try:
        path = device_figure(cfg.device, out or f"outputs/device_{name}.png")
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    print(path)
    return Path(path)


if __name__ == "__main__":
    main()
