"""Hydra configuration tree, installed as the package ``analogtrain.conf``.

Importing it stores the structured-config schemas in Hydra's ConfigStore (``register_configs``, idempotent):
the YAML files select them (``defaults: [<name>_schema, _self_]``), so a config composed through Hydra's
compose API, ``initialize_config_module("analogtrain.conf")``, which imports this package, finds them
without a call of its own (README "As a library")."""

from analogtrain.config.schema import register_configs as _register_configs

_register_configs()
