"""User-facing errors. Command-line entry points turn them into one line (radnet_tf.cli)."""


class UserError(Exception):
    """An error caused by the user's input or configuration.

    Command-line entry points print it as one line (no traceback) and exit 2.
    """


class DicomReadError(UserError):
    """A DICOM file or folder cannot be turned into a CT volume."""
