"""How a script's process lives and ends: its entry point and exit statuses, Ctrl-C and SIGTERM, the worker
processes it forks, a stdout whose reader went away, and the temporary files of writers that died.

    if __name__ == "__main__":
        process.run(main)

Every script ends through `run`: a UserError is one line and exit status 2, Ctrl-C is "interrupted" and 130, a
reader that went away (`| head`) is 141, as a shell reports SIGPIPE. A Ctrl-C that comes before run, while the
script still imports, ends it the same way (starting.py, every script's first import). The rest makes a stop safe
wherever it comes: training stops at a step boundary when asked (StopRequest), a checkpoint write or a dataset's
renames finish before a Ctrl-C is taken (uninterrupted), forked workers end with the process that forked them, a
print to a closed pipe does not end a run (StdoutOrStderr), a folder is held by one run at a time (hold), and what a
killed writer left behind is removed by the next one.

Its own module because it is one idea apart from the settings (configurator.py): signals and processes, not flags,
shared by every script and by the modules that write files (checkpoint.py, datafiles.py). It needs no torch: the
vote of a torchrun launch's processes on a stop is a collective (parallel.anyone).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import starting
from configurator import UserError

PR_SET_PDEATHSIG = 1  # prctl's option (linux/prctl.h): the signal a process gets when its parent ends
INTERRUPTS: list[int] = []  # the Ctrl-Cs noted while interrupts_noted is in force


def run(main: Callable[[list[str]], Any]) -> None:
    """Entry point of every script: call main(argv) and turn a UserError into one line and exit 2."""
    INTERRUPTS.clear()  # a Ctrl-C noted by an earlier run in this process is not this one's
    try:
        starting.finished()  # a Ctrl-C from here on is a KeyboardInterrupt, turned into the same end below
        with interrupts_noted():
            main(sys.argv[1:])
    except UserError as e:
        if str(e):
            print(f"error: {e}", file=sys.stderr, flush=True)
        if e.together:
            leave()
        sys.exit(2)  # under torchrun too: a scheduler or `&&` must see the failure
    except KeyboardInterrupt:
        interrupted()
    except BrokenPipeError:  # the reader went away (`--help | head`, a Ctrl-C'd `| tee`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit cannot fail
        sys.exit(141)  # 128 + SIGPIPE, as a shell reports a process killed by it
    except Exception:
        if INTERRUPTS:  # a library's clean-up turned the Ctrl-C into an error of its own (a pool's result that
            # timed out while its workers were stopping): the user still asked to stop, and nothing broke
            interrupted()
        raise


def interrupted() -> None:
    """The end of a script stopped by Ctrl-C: one line, the library workers stopped, exit status 130."""
    print("interrupted", file=sys.stderr)
    stop_children()
    sys.exit(130)  # 128 + SIGINT, as a shell reports it


@functools.cache  # once a process: the fork hooks stay registered
def children_end_with_their_parent() -> None:
    """From now on, on Linux, a process forked from this one (or from one of its children) gets SIGTERM when
    the process that forked it ends, however that ends, and leaves Ctrl-C to it: a terminal's Ctrl-C reaches every
    process of the group, and a library's worker would print its own traceback; the parent stops its workers
    (stop_children) instead. A worker that a Ctrl-C caught between its fork and its registration is then not left
    running, unknown to anyone (stop_children cannot see it)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: no parent-death signal
        return
    forking = [os.getpid()]

    def in_child() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != forking[0]:  # the parent ended before the signal was asked for
            os._exit(1)

    os.register_at_fork(before=lambda: forking.__setitem__(0, os.getpid()), after_in_child=in_child)


def end_with_launcher() -> None:
    """Under torchrun (which sets TORCHELASTIC_RUN_ID in its workers), on Linux: SIGTERM to this worker when its
    launcher ends, however it ends (a kill -9 of torchrun included), so that the worker stops at its next step
    boundary as for a SIGTERM, its checkpoint saved, rather than train on unseen; a worker whose launcher is already
    gone leaves at once."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: no parent-death signal
        return
    launcher = os.getppid()
    prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    # adopted by init, or by another reaper since the first look: the launcher died before the signal was asked for
    if launcher == 1 or os.getppid() != launcher:
        raise UserError("this worker's torchrun launcher has ended: the run is over")


def stop_children() -> None:
    """End the worker processes a library started (multiprocessing's, and the multiprocess fork's that datasets
    uses) before the interpreter exits: at exit each waits for its children, and a child that ignores Ctrl-C
    and was never told to stop (a process manager that Ctrl-C caught being started) would keep it waiting for
    ever."""
    for name in ("multiprocessing", "multiprocess"):
        module = sys.modules.get(name)
        for child in module.active_children() if module is not None else []:
            child.terminate()


def leave() -> None:
    """Before the processes of a torchrun launch exit 2 together: torchrun stops every worker once one has
    failed, so the others first wait until rank 0 has printed why (a barrier, or a moment before the process
    group exists)."""
    if not close_group() and os.environ.get("RANK", "0") != "0":
        time.sleep(1.0)


def close_group() -> bool:
    """Close the process group, if there is one, once every process has reached this point: one that closed while
    another still sent could abort its exit, as can a communication thread left running. Whether there was one."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return False
    dist.barrier()
    dist.destroy_process_group()
    return True


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Ctrl-C held back until the block ends, then handled as it would have been: a Ctrl-C during a checkpoint
    write, or during the renames that put a prepared dataset in place, lets them finish and then stops, rather
    than leaving a file half written or a dataset half replaced. Signals reach Python in the main thread only:
    elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held and callable(previous):  # Python's default handler raises KeyboardInterrupt; StopRequest's stops
            previous(signal.SIGINT, held[0])
        elif held and previous == signal.SIG_DFL:
            raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_noted() -> Iterator[None]:
    """While the block runs, Ctrl-C raises KeyboardInterrupt as usual and is also noted in INTERRUPTS. Python
    cannot raise it inside a finaliser (a __del__, a weakref or at-fork callback: it prints it there and goes on),
    so it is delivered again a moment later (interrupt_again), and work about to be committed checks INTERRUPTS
    too (datafiles.staged). Only where Ctrl-C is Python's default (not ignored, not handled by the caller) and in
    the main thread, where signals reach Python."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    INTERRUPTS.clear()
    hook = sys.unraisablehook
    signal.signal(signal.SIGINT, noted_interrupt)
    sys.unraisablehook = functools.partial(interrupt_again, os.getpid(), hook)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.unraisablehook = hook


def noted_interrupt(signum: int, frame: Any) -> None:
    INTERRUPTS.append(signum)
    raise KeyboardInterrupt


def interrupt_again(pid: int, previous: Callable[[Any], None], unraisable: Any) -> None:
    """sys.unraisablehook: a Ctrl-C that came while Python ran a finaliser is delivered again a moment later,
    outside it, rather than printed as an ignored traceback while the work goes on. In a forked worker (which its
    parent stops) it is dropped. Anything else goes to the previous hook."""
    if not issubclass(unraisable.exc_type, KeyboardInterrupt):
        previous(unraisable)
    elif os.getpid() == pid:
        threading.Timer(0.01, os.kill, (pid, signal.SIGINT)).start()


class StopRequest:
    """Within `with`, the first SIGTERM (what a cluster scheduler sends before preemption) or Ctrl-C asks the run
    to stop at the next step boundary, with a checkpoint; a second Ctrl-C stops it at once. Under torchrun the
    processes vote on it (parallel.anyone)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal: str | None = None  # the name of the signal that asked, once one has
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # only the main thread may take signals
            # a signal the user's shell ignores (nohup, a background job) stays ignored
            taken = [s for s in self.SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]
            self.previous = {s: signal.signal(s, self.handle) for s in taken}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handle(self, signum: int, frame: object) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name


class StdoutOrStderr:
    """sys.stdout for the run, until its reader is gone (`| tee` ended by the same Ctrl-C, `| head`): from then on
    the lines go to stderr and training goes on, so that a print never ends a run before its checkpoint."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            self.to_stderr()
            return sys.stderr.write(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self.to_stderr()

    def to_stderr(self) -> None:
        if self.stream is not sys.stderr:  # the exit's flush of the real stdout must not fail either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.__stdout__.fileno())
            self.stream = sys.stderr

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def remove_dead_writers(folder: str, pattern: re.Pattern[str]) -> None:
    """Remove the entries of folder that match pattern, temporary files and directories of writers, unless the
    writer whose pid the pattern's first group that matched captures is still running (none captured: always)."""
    for entry in os.listdir(folder):
        match = pattern.fullmatch(entry)
        pid = next((group for group in match.groups() if group is not None), None) if match else None
        if match is None or (pid is not None and running(int(pid))):
            continue
        path = os.path.join(folder, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


@contextlib.contextmanager
def hold(folder: str, lock_file: str, leftovers: re.Pattern[str], name: str) -> Iterator[None]:
    """Hold folder for this process alone: an exclusive lock on folder/lock_file, which the operating system
    releases when the process ends in any way, a kill included. A second holder is refused in one line naming the
    first (`name`: what the folder is to the user). Once held, what dead writers left there is removed
    (remove_dead_writers)."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here, and no second holder is refused
        yield
        return
    with open(os.path.join(folder, lock_file), "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise UserError(f"{name} {folder} is in use by another run ({f.read().strip() or 'unknown'}): wait "
                            f"for it to end, or choose another {name}") from None
        f.truncate(0)
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                f"{shlex.join(sys.argv)}\n")
        f.flush()
        remove_dead_writers(folder, leftovers)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def holder(folder: str, lock_file: str) -> str | None:
    """Who holds folder now (hold), in its lock file's words; None where no process does. Only for a process that
    does not hold it itself: its own lock would look like another's."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks, no holder known
        return None
    try:
        with open(os.path.join(folder, lock_file), encoding="utf-8") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return f.read().strip() or "unknown"
            fcntl.flock(f, fcntl.LOCK_UN)
    except OSError:  # no lock file: never held
        return None
    return None


def running(pid: int) -> bool:
    """Whether process pid is alive (on this machine): the owner of a temporary file named after it, say."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
