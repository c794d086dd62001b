"""User-facing errors: the CLI prints these without a traceback."""


class TuneforgeError(Exception):
    """A mistake the user can fix: the message names the file, line or field, and the fix."""


class ConfigError(TuneforgeError):
    """A config file or override that does not fit the schema."""


class DataError(TuneforgeError):
    """A data file that cannot be read as asked."""


class ModelError(TuneforgeError):
    """A model that cannot be found or loaded."""
