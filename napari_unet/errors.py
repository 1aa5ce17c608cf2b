"""The one family of errors a user can cause. Faces show their message without a traceback."""


class NapariUnetError(Exception):
    """A mistake the user can fix; the message says what was wrong and what to do."""


class InputSizeError(NapariUnetError, ValueError):
    """An image size the network cannot take."""


class DataError(NapariUnetError, ValueError):
    """Unreadable, mismatched or unsupported images and masks."""


class ConfigError(NapariUnetError, ValueError):
    """An unknown option, a wrong type or an impossible combination of options."""


class CheckpointError(NapariUnetError):
    """A checkpoint or run folder that cannot be used."""


class OutputExistsError(NapariUnetError, FileExistsError):
    """An output file already exists and overwriting was not asked for."""


class TrainingDiverged(NapariUnetError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class OutOfMemory(NapariUnetError, MemoryError):
    """The GPU (or RAM) ran out; the message names the option to lower."""
