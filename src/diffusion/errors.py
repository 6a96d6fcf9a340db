"""The errors a user can fix, in one module that imports nothing.

Each message is one sentence that names the setting or file at fault and says what to do.
The entry points end with that sentence and exit status 1 for every type in ``USER_ERRORS``
(``diffusion.commands.launcher.fail``); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value a user set is not allowed; the message names the key and the fix."""


class RunError(RuntimeError):
    """A path that should be a run folder is not one; the message says what to do."""


class CheckpointError(RuntimeError):
    """A checkpoint is missing or unreadable; the message says what to do."""


class TrainingError(RuntimeError):
    """Training cannot go on (for example the loss diverged); the message says what to do."""


class DatasetNotFoundError(RuntimeError):
    """The dataset's files are missing and could not be downloaded."""


class DatasetCorruptError(DatasetNotFoundError):
    """A dataset file is there but damaged; the message names it and says how to replace it.

    A kind of ``DatasetNotFoundError`` since, either way, the user has to provide the file,
    and the entry points already end with that error's message.
    """


class FeatureNetworkError(RuntimeError):
    """A feature network cannot be built or loaded; the message says what to do."""


class StorageError(RuntimeError):
    """A file could not be written (a full disk, a read-only folder); the message names it
    and says what to do. Nothing half-written is left behind."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, RunError, CheckpointError, TrainingError, DatasetNotFoundError,
    FeatureNetworkError, StorageError)
