"""Clean command-line errors: a bad config value, an unknown config option, a malformed data file or a missing
model or file prints one line (``error: ...``) and exits with status 2, without a traceback.
``HYDRA_FULL_ERROR=1`` shows the full traceback instead (for every entry point, Hydra or not). ``-h``/``--help``
prints an entry point's usage and docstring and exits 0, also where argv is otherwise Hydra overrides."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from hydra.errors import HydraException, MissingConfigException

from pact.data.rows import DataFileError
from pact.run.config import ConfigError

USER_ERRORS = (ConfigError, DataFileError, FileNotFoundError, HydraException)
EXIT_USER_ERROR = 2  # as argparse exits on a bad argument
FULL_ERROR_ENV = "HYDRA_FULL_ERROR"
HELP_FLAGS = ("-h", "--help")
OVERRIDES = "[key=value ...]"  # the usage of Hydra overrides given as bare argv


def one_line(err: BaseException) -> str:
    """The message of a user error on one line."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options is not None:
        group, _, name = err.missing_cfg_file.rpartition("/")
        return f"{group}={name}: no such option in conf/{group}/; choose one of {list(err.options)}"
    lines = [line.strip() for line in str(err).splitlines()]
    lines = [line for line in lines if line and not line.startswith(("See https://", "Config search path",
                                                                     "provider="))]
    return " ".join(lines) or type(err).__name__


def exit_on_help(argv: Sequence[str], module: str, doc: str | None, usage: str = OVERRIDES) -> None:
    """When ``argv`` asks for help, print ``usage: python -m module usage`` and the module's docstring ``doc``, and
    exit 0. Entry points that hand bare argv to Hydra's compose call it first: Hydra would read ``--help`` as a
    malformed override."""
    if any(a in HELP_FLAGS for a in argv):
        print(f"usage: python -m {module} {usage}".rstrip())
        if doc:
            print(f"\n{doc.strip()}")
        sys.exit(0)


def pop_option(args: list[str], name: str, what: str) -> str | None:
    """Remove ``name VALUE`` from ``args`` (the rest are Hydra overrides) and return VALUE; None when ``name`` is
    absent; a ``name`` with no value stops the command naming ``what`` it needs."""
    if name not in args:
        return None
    i = args.index(name)
    if i + 1 >= len(args):
        fail(f"{name} needs {what}")
    value = args[i + 1]
    del args[i:i + 2]
    return value


def fail(message: str) -> NoReturn:
    """Print ``error: message`` to stderr and exit with status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


_forced_full_error = False  # True while run_cli has switched Hydra's full-error mode on itself


def wants_traceback() -> bool:
    """Whether the user asked for full tracebacks (``HYDRA_FULL_ERROR=1``)."""
    return os.environ.get(FULL_ERROR_ENV) == "1" and not _forced_full_error


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a user error raised inside the block into one line and exit status 2 (unless tracebacks are
    wanted). Hydra task functions use it too: an error a Hydra job raises is otherwise reported around it."""
    try:
        yield
    except USER_ERRORS as err:
        if wants_traceback():
            raise
        fail(one_line(err))


def run_cli(entry: Callable[[], Any]) -> Any:
    """Run an entry point, turning user errors into one line and exit status 2. Hydra prints its own short
    traceback for errors it catches (an unknown config option, a bad override), so its full-error mode is
    switched on while ``entry`` runs: every exception reaches this function, which re-raises it whole when the
    user asked for ``HYDRA_FULL_ERROR=1``."""
    global _forced_full_error
    forced = os.environ.get(FULL_ERROR_ENV) != "1"
    if forced:
        os.environ[FULL_ERROR_ENV] = "1"
        _forced_full_error = True
    try:
        with user_errors():
            return entry()
    finally:
        if forced:
            os.environ.pop(FULL_ERROR_ENV, None)
            _forced_full_error = False
