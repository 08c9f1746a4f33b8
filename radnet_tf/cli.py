"""What every command-line entry point shares: quiet start-up, one output style, one-line
errors.

  * TensorFlow's start-up log lines are silenced before TensorFlow is imported (the
    `TF_CPP_MIN_LOG_LEVEL` / absl / Python-warning settings live only here); `--verbose`
    brings them back. TensorFlow 2.21 writes its import-time lines (oneDNN, CUDA stubs,
    CPU features) through absl before any log level applies, so the first
    `import tensorflow` of a command runs with file descriptor 2 pointed at /dev/null
    (`_QuietImport`); Python errors raised by that import still reach the user. Worker
    processes (multiprocessing "spawn") inherit `RADNET_QUIET=1` and install the same hook
    when they import this module, which spawn does (through the entry-point module) before
    it unpickles any worker function. Entry-point
    modules import TensorFlow lazily, so `--help` answers without importing it.
  * Progress and result lines start with `[radnet] ` (`say`); machine-readable output
    (predict's and inspect's JSON) goes alone to stdout, their progress lines to stderr.
  * `UserError` becomes one line `[radnet] error: ...` on stderr and exit code 2;
    Ctrl-C exits 130.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.util
import logging
import os
import sys
import warnings

from radnet_tf.errors import UserError

PREFIX = "[radnet]"
QUIET_ENV = "RADNET_QUIET"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def say(message: str, *, err: bool = False):
    """Prints one progress/result line with the project prefix (stdout, or stderr)."""
    print(f"{PREFIX} {message}", file=sys.stderr if err else sys.stdout, flush=True)


@contextlib.contextmanager
def _stderr_fd_silenced():
    """Points file descriptor 2 (C/C++ stderr) at /dev/null for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _QuietImport(importlib.abc.MetaPathFinder):
    """Runs the first `import tensorflow` with C-level stderr silenced."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; the real finders do the work
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec(module):
            with _stderr_fd_silenced():
                exec_module(module)

        spec.loader.exec_module = quiet_exec
        return spec


def _install_quiet_import():
    if "tensorflow" not in sys.modules and not any(
        isinstance(f, _QuietImport) for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietImport())


if os.environ.get(QUIET_ENV) == "1":  # a worker process of a quiet command
    _install_quiet_import()


def configure_logging(verbose: bool = False):
    """Silences TensorFlow/absl start-up and warning lines unless `verbose`.

    Must run before TensorFlow is imported for the C++ log level to take effect; the
    Python-side loggers are set here too in case TensorFlow is already loaded.
    """
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0" if verbose else "3"
    os.environ[QUIET_ENV] = "0" if verbose else "1"  # inherited by worker processes
    if verbose:
        return
    _install_quiet_import()
    warnings.filterwarnings("ignore", module=r"(tensorflow|keras|absl|google\.protobuf)(\.|$)")
    for name in ("tensorflow", "absl", "keras", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)


def progress(iterable, enabled, total=None, desc="", unit="it"):
    """`iterable` with a tqdm progress bar when `enabled`, else unchanged."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit)


def add_verbose(parser):
    """Adds the shared `--verbose` flag to an argparse parser; returns the parser."""
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's log lines")
    return parser


def cli_main(func):
    """Decorates `main(argv=None)`: quiet start-up (unless --verbose), `UserError` -> one
    line on stderr and exit 2, Ctrl-C -> exit 130. Called with an argument list (from
    Python), it returns what `func` returns; called as a command (no arguments, as the
    console scripts' `sys.exit(main())` does), it returns None, so the exit code is 0."""

    @functools.wraps(func)
    def wrapper(argv=None):
        as_command = argv is None
        argv = list(sys.argv[1:] if argv is None else argv)
        configure_logging(verbose="--verbose" in argv)
        try:
            result = func(argv)
            return None if as_command else result
        except UserError as err:
            print(f"{PREFIX} error: {err}".replace("\n", " "), file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None
        except KeyboardInterrupt:
            print(f"{PREFIX} interrupted", file=sys.stderr)
            raise SystemExit(EXIT_INTERRUPTED) from None

    return wrapper
