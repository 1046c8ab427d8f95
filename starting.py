"""Ctrl-C while a script is still starting: every script imports this module first, before torch, numpy and the
rest, so that a Ctrl-C during those imports ends it as one during main does (process.run): "interrupted" on stderr
and exit status 130, rather than a KeyboardInterrupt traceback, or an abort when the KeyboardInterrupt is raised in
Python that torch's C++ start-up called.

Its own module, and the one module here that acts when imported, because it must be in force before the heavy
imports run: it needs nothing but the standard library. It acts only for the script that Python runs, never for a
test or a notebook that imports a script for its functions; process.run gives Ctrl-C back to Python (finished) just
before main.
"""

from __future__ import annotations

import os
import signal
import sys


def interrupted_while_starting(signum: int, frame: object) -> None:
    """The SIGINT handler until process.run: one line and exit status 130, at once. os._exit rather than an
    exception: the handler may run inside an import, in Python called from C++ (torch's), where an exception of any
    kind, SystemExit too, may abort the process rather than end it; and nothing has started yet that an orderly exit
    would clean up."""
    os.write(sys.stderr.fileno(), b"interrupted\n")  # not print: the signal may have come in the middle of one
    os._exit(130)  # 128 + SIGINT, as a shell reports it


def imported_by_main() -> bool:
    """Whether the import that runs this module is a statement of the program's __main__ (`python train.py`), not
    of a module that something else imported (a test's `import train`)."""
    frame = sys._getframe(1).f_back  # the frames above this module's own code
    while frame is not None and frame.f_code.co_filename.startswith("<frozen importlib"):  # the import machinery
        frame = frame.f_back
    return frame is not None and frame.f_globals.get("__name__") == "__main__"


def finished() -> None:
    """The script's start is over (process.run is about to call main): Ctrl-C raises KeyboardInterrupt again."""
    if signal.getsignal(signal.SIGINT) is interrupted_while_starting:
        signal.signal(signal.SIGINT, signal.default_int_handler)


# a Ctrl-C that the user's shell ignores (nohup, a background job) stays ignored
if imported_by_main() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, interrupted_while_starting)
