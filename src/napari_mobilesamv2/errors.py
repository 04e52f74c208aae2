"""Exception types raised by napari-mobilesamv2.

Every error a user can cause derives from :class:`MobileSAMv2Error`, so scripts can
catch one type, and the CLI turns it into a one-line message with a non-zero exit.
"""


class MobileSAMv2Error(Exception):
    """Base class of all errors this package raises on purpose."""


class InputError(MobileSAMv2Error, ValueError):
    """An image, prompt or parameter cannot be used; the message says how to fix it."""


class OutputError(InputError, OSError):
    """An output file cannot be written (missing folder, no permission, disk full, or it is an input).

    Nothing is left half-written: outputs are written to a temporary file that is renamed
    into place only when complete, so an existing file of that name is kept as it was.
    """


class CheckpointError(MobileSAMv2Error, ValueError):
    """A weights file is unreadable or is not the file the slot expects."""


class WeightsUnavailableError(MobileSAMv2Error, FileNotFoundError):
    """A weights file is neither on disk nor downloadable (e.g. no network)."""


class UntrustedWeightsError(MobileSAMv2Error, PermissionError):
    """A pickled checkpoint of unknown origin would have to be unpickled."""


class UntrustedWeightsWarning(UserWarning):
    """A pickled checkpoint of unknown origin is loaded because the user chose to trust it."""


class IntegrityError(MobileSAMv2Error, OSError):
    """A downloaded or cached file does not have the expected sha256."""
