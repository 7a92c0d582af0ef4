"""`python -m pipeline ARGS` from an interpreter that has already imported torch, torchvision and timm.

Every `pipeline` process spends about 5 CPU-seconds importing torch, torchvision (which pulls in
torch._dynamo through torchvision.ops) and timm before it reads its config: a `pipeline plan` is
almost all import. The suite runs ~150 such commands, so about a third of its CPU time went to
imports (docs/benchmarks.md, "The test suite's CPU time"). Here one server per pytest worker
imports them once, and each command is a fork of that server running `python -m pipeline`'s code:
its own process, environment, working directory, stdin from /dev/null, stdout and stderr files,
exit status, threads joined and atexit handlers run at exit, as a fresh interpreter would.

What a fork cannot give is what is read as the interpreter or a library loads: the server starts
with OMP_NUM_THREADS=1 (what run_cli passes), and a command whose environment differs in one of
READ_AT_START runs in a fresh interpreter instead. PIPELINE_TESTS_EXEC=1 runs every command in a
fresh interpreter; tests/test_preforked.py runs commands both ways and compares them.
"""
from __future__ import annotations

import atexit
import importlib
import io
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

# What the server imports once. pipeline.cli first: it sets THP_MEM_ALLOC_ENABLE before torch loads.
PRELOAD = ("pipeline.cli", "pipeline.training.job", "pipeline.training.evaluate", "pipeline.tools.export")
# Read once, as the interpreter or a library loads (libgomp reads OMP_NUM_THREADS as torch loads).
READ_AT_START = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "THP_MEM_ALLOC_ENABLE", "PYTHONPATH", "PYTHONHASHSEED",
                 "LD_PRELOAD", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
SERVER_SETS = {"OMP_NUM_THREADS": "1", "THP_MEM_ALLOC_ENABLE": "1"}  # what run_cli and pipeline.cli set


def _at_start(env: dict[str, str]) -> dict[str, str | None]:
    values = {name: env.get(name) for name in READ_AT_START}
    values["THP_MEM_ALLOC_ENABLE"] = values["THP_MEM_ALLOC_ENABLE"] or "1"  # pipeline.cli's setdefault
    return values


def usable(env: dict[str, str]) -> bool:
    """Whether a command with this environment can run in a fork of the server (started or to start)."""
    if os.environ.get("PIPELINE_TESTS_EXEC") == "1":
        return False
    server_started_with = _server.at_start if _server else _at_start({**os.environ, **SERVER_SETS})
    return _at_start(env) == server_started_with


# ---- in the server and its forks ----

def _exit_status(code: object) -> int:
    """The status the interpreter gives `sys.exit(code)`."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _command(args: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> None:
    """In the fork: `python -m pipeline ARGS`, its stdout and stderr going to files. Never returns."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        file = os.open(path, flags, 0o644)
        os.dup2(file, fd)
        os.close(file)
    sys.stdin = open(0, closefd=False)
    # unbuffered, as PYTHONUNBUFFERED (which run_cli sets) makes a fresh interpreter's streams
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True, write_through=True)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), errors="backslashreplace",
                                  line_buffering=True, write_through=True)
    sys.argv = [str(Path(cwd) / "pipeline" / "__main__.py"), *args]
    status = 0
    try:
        runpy.run_module("pipeline", run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        status = _exit_status(stop.code)
    except BaseException:  # uncaught: the traceback and status 1, as the interpreter gives
        traceback.print_exc()
        status = 1
    threading._shutdown()  # the interpreter's exit: wait for non-daemon threads, then atexit handlers
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def serve() -> None:
    """Read one JSON request per line on stdin; answer the fork's pid, then its exit status."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # what the imports print goes to stderr, not into the replies
    for name in PRELOAD:
        importlib.import_module(name)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            replies.close()  # the fork and what it starts must not hold the server's reply pipe open
            signal.signal(signal.SIGINT, signal.default_int_handler)
            _command(**request)
        replies.write(f"{pid}\n")
        replies.write(f"{os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}\n")


# ---- in the pytest worker ----

class _Server:
    def __init__(self) -> None:
        env = {**os.environ, **SERVER_SETS}
        self.at_start = _at_start(env)
        self.process = subprocess.Popen([sys.executable, "-m", "tests.preforked"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env, cwd=Path(__file__).parents[1])
        self.lock = threading.Lock()
        self.forks = 0  # commands run as forks (tests/test_preforked.py checks its commands took this path)

    def _line(self, deadline: float | None) -> str | None:
        """One reply line, read a byte at a time (no read-ahead), or None past the deadline."""
        fd, text = self.process.stdout.fileno(), b""
        while not text.endswith(b"\n"):
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], wait)[0]:
                return None
            byte = os.read(fd, 1)
            if not byte:
                raise RuntimeError(f"the preforked pipeline server ended (exit {self.process.wait()})")
            text += byte
        return text.decode()

    def run(self, request: dict, timeout: float) -> tuple[int, bool]:
        """(exit status, whether it ran past the timeout and was killed)."""
        with self.lock:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
            pid = int(self._line(None))
            self.forks += 1
            status = self._line(time.monotonic() + timeout)
            if status is None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:  # it ended as the deadline passed
                    pass
                return int(self._line(None)), True
            return int(status), False


_server: _Server | None = None


def run(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Like subprocess.run([python, -m, pipeline, *args], capture_output=True, text=True, timeout=...)."""
    global _server
    if _server is None or _server.process.poll() is not None:
        _server = _Server()
    command = [sys.executable, "-m", "pipeline", *args]
    with tempfile.TemporaryDirectory(prefix="preforked-") as folder:
        out, err = Path(folder) / "stdout", Path(folder) / "stderr"
        request = {"args": list(args), "env": env, "cwd": str(cwd), "out": str(out), "err": str(err)}
        status, timed_out = _server.run(request, timeout)
        stdout, stderr = out.read_text(), err.read_text()
    if timed_out:
        raise subprocess.TimeoutExpired(command, timeout, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(command, status, stdout, stderr)


if __name__ == "__main__":
    serve()
