"""The one error type for bad configuration, raised before any work is done."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range.

    The message is one line that names the full dotted key and what is allowed, e.g.
    ``device.asymmetry=1.5 is out of range: allowed -1 < asymmetry < 1``.
    """

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)

    def __reduce__(self):
        # (key, message), not the joined text: a multirun job's error crosses a process boundary (joblib,
        # submitit pickle it back to the launcher), and the default (cls, args) would call __init__ with
        # one argument
        return (type(self), (self.key, self.message))
