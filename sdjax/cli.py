"""What every sdjax command line shares: exit codes, one-line errors, flag parsing.

Bad input ends a program with one line, `error: ...`, on stderr and exit code 1; a run stopped by
SIGTERM or Ctrl-C after saving its checkpoint exits with `EXIT_PREEMPTED`, which a scheduler can
requeue on. `SDJAX_TRACEBACK=1` shows the full traceback of an error instead.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

EXIT_ERROR = 1
EXIT_USAGE = 2
# BSD sysexits' EX_TEMPFAIL, "temporary failure, retry": the run saved a checkpoint and stopped on
# SIGTERM/SIGINT; the same command resumes it.
EXIT_PREEMPTED = 75
TRACEBACK_ENV = "SDJAX_TRACEBACK"
# What bad input raises: files missing or unreadable, values out of range or unknown, a busy or
# failed run (a runtime error such as running out of memory is one line too).
USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError, RuntimeError)


def quiet_tensorflow() -> None:
    """TensorFlow's C++ logs from warnings up (not its start-up notes); call before importing it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print `error: message` on stderr and exit with `code`."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def error_text(error: BaseException) -> str:
    """The message of `error` on one line (KeyError's quotes and nested errors unwrapped)."""
    while isinstance(error, KeyError | AttributeError) and error.args:
        inner = error.args[0]
        if isinstance(inner, BaseException):
            error = inner
        elif isinstance(inner, str):
            return " ".join(inner.split())
        else:
            break
    text = str(error) or type(error).__name__
    return " ".join(text.split())


def one_line_errors(main: Callable[..., Any]) -> Callable[..., Any]:
    """`main` with `USER_ERRORS` turned into `error: ...` and exit code 1."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except USER_ERRORS as error:
            if os.environ.get(TRACEBACK_ENV):
                raise
            fail(error_text(error))

    return wrapped


def parse_absl_flags(argv: list[str], flag_values: Any = None) -> list[str]:
    """absl's flag parsing for `app.run(..., flags_parser=...)` (of `flag_values`, default the
    global flags), with a bad flag or config override (`--config.train.num_stepz=5`) reported
    in one line and exit code 2."""
    from absl import flags

    try:
        return (flag_values or flags.FLAGS)(argv)
    except (flags.Error, AttributeError, *USER_ERRORS) as error:
        if os.environ.get(TRACEBACK_ENV):
            raise
        text = error_text(error)
        bad = next((a for a in argv[1:] if f"'{_flag_field(a)}'" in text), None)
        where = f"{bad}: " if bad and bad not in text else ""
        fail(f"{where}{text} (see --help)", EXIT_USAGE)


def _flag_field(arg: str) -> str:
    """The last dotted part of a flag's name: `--config.train.num_steps=5` -> `num_steps`."""
    return arg.split("=")[0].lstrip("-").rsplit(".", 1)[-1] if arg.startswith("-") else ""
