"""process.py: how a script's process ends (a user error's one line and exit 2, Ctrl-C's 130, a gone reader's 141,
a Ctrl-C while it still imports: starting.py), the stop that SIGTERM or Ctrl-C asks of training, and the worker
processes it forks."""

from __future__ import annotations

import ast
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import process
from conftest import REPO_ROOT, script_env
from configurator import UserError


def test_run_turns_user_error_into_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]):
    def failing_main(argv: list[str]) -> None:
        raise UserError("something is wrong")

    with pytest.raises(SystemExit, match="2") as exit_info:
        process.run(failing_main)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: something is wrong\n"


def test_a_reader_that_goes_away_ends_the_script_quietly():
    # `python train.py --help | head`: print meets a closed pipe; no traceback, the status a shell gives SIGPIPE
    script = ("import sys\nsys.path.insert(0, sys.argv[1])\nimport process\n"
              "def main(argv):\n    print('some help')\n    raise BrokenPipeError(32, 'Broken pipe')\n"
              "process.run(main)\n")
    done = subprocess.run([sys.executable, "-c", script, str(REPO_ROOT)], capture_output=True, text=True,
                          env=script_env(), timeout=60, check=False)
    assert (done.returncode, done.stderr) == (141, "")


def test_a_forked_worker_ends_with_the_process_that_forked_it(tmp_path: Path):
    # a child that ignores Ctrl-C, as a process manager's server does, left behind by a parent that exits
    script = ("import os, signal, sys, time\nsys.path.insert(0, sys.argv[1])\nimport process\n"
              "process.children_end_with_their_parent()\npid = os.fork()\n"
              "if pid == 0:\n    signal.signal(signal.SIGINT, signal.SIG_IGN)\n    time.sleep(60)\n    os._exit(0)\n"
              "print(pid, flush=True)\n")
    out = subprocess.run([sys.executable, "-c", script, str(REPO_ROOT)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    deadline = time.monotonic() + 30
    while not ended(int(out)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ended(int(out))


def test_a_torchrun_worker_gets_sigterm_when_its_launcher_is_killed():
    # a launcher (torchrun's part, played by a plain process) starts a worker as torchrun does, with
    # TORCHELASTIC_RUN_ID set; kill -9 of the launcher reaches the worker as a SIGTERM, which it reports
    worker = ("import signal, sys, time\nsys.path.insert(0, sys.argv[1])\nimport process\n"
              "process.end_with_launcher()\n"
              "signal.signal(signal.SIGTERM, lambda *a: (print('SIGTERM', flush=True), sys.exit(0)))\n"
              "print('ready', flush=True)\ntime.sleep(60)\n")
    launcher = ("import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]])\n"
                "time.sleep(60)\n")
    run = subprocess.Popen([sys.executable, "-c", launcher, worker, str(REPO_ROOT)], stdout=subprocess.PIPE,
                           text=True, env=script_env(TORCHELASTIC_RUN_ID="test"))
    try:
        assert run.stdout.readline() == "ready\n"
        run.kill()  # kill -9: the launcher cannot pass anything on
        run.wait()
        assert run.stdout.readline() == "SIGTERM\n"  # the worker (which holds the pipe too) heard of it
    finally:
        run.kill()


def test_outside_torchrun_no_launcher_is_watched(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    calls = []
    monkeypatch.setattr(process.ctypes, "CDLL", lambda *a, **k: calls.append(a))
    process.end_with_launcher()
    assert calls == []


def test_a_forked_worker_leaves_ctrl_c_to_the_process_that_forked_it():
    # a terminal's Ctrl-C reaches every process of the group: a library's worker must not print a traceback of its
    # own (its parent stops it); the parent keeps Python's handler
    script = ("import os, signal, sys\nsys.path.insert(0, sys.argv[1])\nimport process\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "process.children_end_with_their_parent()\nread, write = os.pipe()\n"
              "if os.fork() == 0:\n"
              "    os.write(write, str(signal.getsignal(signal.SIGINT) is signal.SIG_IGN).encode())\n"
              "    os._exit(0)\nos.close(write)\nchild = os.read(read, 100).decode()\n"
              "print(child, signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n")
    out = subprocess.run([sys.executable, "-c", script, str(REPO_ROOT)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out == "True True\n"


def test_a_ctrl_c_that_a_library_turns_into_another_error_still_ends_as_interrupted():
    # datasets' map, stopped by Ctrl-C, waits for its pool's results in a finally block, and their timeout replaces
    # the KeyboardInterrupt: the user asked to stop, so "interrupted" and 130, not a traceback
    script = ("import signal, sys, time\nsys.path.insert(0, sys.argv[1])\nimport process\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "def main(argv):\n    try:\n        signal.raise_signal(signal.SIGINT)\n        time.sleep(30)\n"
              "    finally:\n        raise TimeoutError\nprocess.run(main)\n")
    done = subprocess.run([sys.executable, "-c", script, str(REPO_ROOT)], capture_output=True, text=True,
                          env=script_env(), timeout=60, check=False)
    assert (done.returncode, done.stderr) == (130, "interrupted\n")
    script = script.replace("signal.raise_signal(signal.SIGINT)", "pass").replace("time.sleep(30)", "pass")
    done = subprocess.run([sys.executable, "-c", script, str(REPO_ROOT)], capture_output=True, text=True,
                          env=script_env(), timeout=60, check=False)
    assert done.returncode == 1 and done.stderr.rstrip().endswith("TimeoutError")  # without a Ctrl-C: a bug's


def test_an_ignored_signal_stays_ignored():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # nohup, or a background job
    try:
        with process.StopRequest():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_IGN, signal.SIG_DFL)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_a_second_ctrl_c_stops_at_once_and_says_so(capsys: pytest.CaptureFixture[str]):
    stop = process.StopRequest()
    stop.handle(signal.SIGINT, None)
    assert stop.signal == "SIGINT"  # the first asks for a stop at the next step boundary
    with pytest.raises(KeyboardInterrupt):
        stop.handle(signal.SIGINT, None)

    def interrupted(argv: list[str]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit, match="130"):
        process.run(interrupted)
    assert capsys.readouterr().err == "interrupted\n"


# a config file (plain Python, run by main) that says main has begun, then waits for the Ctrl-C
WAITING_CONFIG = ('import sys, time\nprint("configuring", file=sys.stderr, flush=True)\ntime.sleep(60)\n'
                  'raise SystemExit("no Ctrl-C came")\n')


@pytest.mark.slow
@pytest.mark.parametrize(("script", "moment"), [
    ("train.py", "starting"),  # its first import done: the earliest a script can answer for
    ("train.py", "numpy"),  # within torch's import: its C++ extension imports numpy as it starts
    ("train.py", "step"),  # late: torch and the repository's modules imported, its own definitions running
    ("data/shakespeare_char/prepare.py", "starting"),
    ("data/shakespeare_char/prepare.py", "numpy"),
    ("data/shakespeare_char/prepare.py", "configuring"),  # in main, under process.run
])
def test_a_ctrl_c_while_a_script_starts_ends_it_as_interrupted(tmp_path: Path, script: str, moment: str):
    config = tmp_path / "waiting.py"
    config.write_text(WAITING_CONFIG, encoding="utf-8")
    status, stderr = interrupted_at(script, moment, config)
    assert (status, stderr.splitlines()[-1], "Traceback" in stderr) == (130, "interrupted", False), stderr[-3000:]


def interrupted_at(script: str, moment: str, config: Path) -> tuple[int, str]:
    """Run `python -X importtime script config` and send it SIGINT once its stderr shows `moment`: the end of a
    module's import (each import's line), or a line of its own. Returns its exit status and stderr."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (CI may ignore SIGINT)
    try:
        child = subprocess.Popen([sys.executable, "-X", "importtime", str(REPO_ROOT / script), str(config)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=script_env())
    finally:
        signal.signal(signal.SIGINT, before)
    with child:
        stderr = ""
        for line in child.stderr:  # the child's progress, rather than a guess at how long its imports take
            stderr += line
            if line.rsplit("|", 1)[-1].strip() == moment:
                child.send_signal(signal.SIGINT)
                break
            if line == "configuring\n":  # main has begun, and the moment has not come
                child.kill()
                pytest.fail(f"{script} never reached {moment}:\n{stderr[-3000:]}")
        stderr += child.stderr.read()
    return child.returncode, stderr


def test_every_script_imports_starting_before_anything_outside_the_standard_library():
    # what a Ctrl-C meets before `starting` is imported is a traceback: the imports of torch, numpy and the rest
    # of the repository must come after it
    scripts = [path for path in [*REPO_ROOT.glob("*.py"), *REPO_ROOT.glob("data/*/prepare.py")]
               if '\nif __name__ == "__main__":\n    process.run(main)' in path.read_text(encoding="utf-8")]
    assert {"train.py", "prepare.py"} <= {path.name for path in scripts}
    for path in scripts:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imports = sorted((node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)),
                         key=lambda node: node.lineno)
        names = [node.names[0].name if isinstance(node, ast.Import) else node.module or "" for node in imports]
        first = next(name for name in names if name.partition(".")[0] not in sys.stdlib_module_names)
        assert first == "starting", f"{path.relative_to(REPO_ROOT)} imports {first} before starting"


def ended(pid: int) -> bool:
    """Whether process pid has ended: gone, or a zombie where nobody reaps it (a container without an init)."""
    try:
        return "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
