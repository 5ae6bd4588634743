"""Errors for bad input, one class per kind of input; each message is one line naming the fix.

They share ``InputError`` so that the command line reports any of them as a one-line message
(without importing the heavy modules that raise them).
"""


class InputError(ValueError):
    """Bad input: the message names the offending thing and what to do."""


class ConfigError(InputError):
    """The configuration is invalid."""


class CheckpointError(InputError):
    """A checkpoint file cannot be read, or its weights do not fit the model."""


class ModelError(InputError):
    """A model cannot be loaded or recorded from."""


class SiteError(InputError):
    """A requested recording site does not exist in the model."""


class StimulusError(InputError):
    """A stimulus set cannot be loaded."""


class StoreError(InputError):
    """A store is missing, incomplete or not an activation store."""


class BackendError(InputError):
    """The requested device or dtype cannot be served here."""


def first_line(err: BaseException) -> str:
    """An error's message cut to its first line (its type name when empty), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
