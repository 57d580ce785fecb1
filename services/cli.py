"""How every KEEP command line ends: a result, or one line ``<prog>: error: <reason>`` and exit 2.

Used by ``keep`` (:mod:`trainer.cli`) and by the ``python -m`` entry points, so a user's mistake is
never a traceback: :class:`services.errors.KeepError` and the usual file errors become one line, a
reader that went away (``keep versions list | head``) is not an error, Ctrl-C exits 130.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from pydantic import ValidationError

from services.errors import KeepError

USER_ERROR_EXIT = 2


def explain_os_error(err: OSError) -> str:
    if err.filename is None:
        return str(err)
    reason = {
        FileNotFoundError: "no such file or directory",
        IsADirectoryError: "is a directory, expected a file",
        NotADirectoryError: "not a directory",
        PermissionError: "permission denied",
    }.get(type(err), err.strerror or str(err))
    return f"{err.filename}: {reason}"


def run_command(prog: str, call: Callable[[], int | None]) -> int:
    """``call()``'s exit status, with the failures above turned into one line on stderr."""
    try:
        try:
            result = call()
            sys.stdout.flush()
        except KeepError as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            return USER_ERROR_EXIT
        except ValidationError as err:  # a setting from the environment that does not parse
            fields = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors(include_url=False)
            )
            print(f"{prog}: error: invalid settings: {fields}", file=sys.stderr)
            return USER_ERROR_EXIT
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
            print(f"{prog}: error: {explain_os_error(err)}", file=sys.stderr)
            return USER_ERROR_EXIT
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return 130
        return int(result or 0)
    except BrokenPipeError:
        # silence the interpreter's own flush of stdout at exit too
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
