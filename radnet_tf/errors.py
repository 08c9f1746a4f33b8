"""User-facing errors and the one-line CLI error contract."""

import functools
import sys


class UserError(Exception):
    """An error caused by the user's input or configuration.

    Command-line entry points print it as one line (no traceback) and exit 2.
    """


class DicomReadError(UserError):
    """A DICOM file or folder cannot be turned into a CT volume."""


def cli_main(func):
    """Decorates a `main(argv=None)` so `UserError` becomes one line and exit code 2."""

    @functools.wraps(func)
    def wrapper(argv=None):
        try:
            return func(argv)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
