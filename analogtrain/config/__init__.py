"""Config schemas (ConfigStore), validation and the ``ConfigError`` type."""
