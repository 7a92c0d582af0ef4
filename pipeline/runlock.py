"""One run directory, one live job: the lock rank 0 takes before it writes anything in `trainer.run_dir`.

`<run_dir>/run.lock` is a small JSON file: host, pid (and the pid's start time, against pid reuse),
Slurm job id and restart count when there are any, start time. While the job runs, a daemon thread
touches the file every HEARTBEAT_S seconds; its mtime is the heartbeat. The job removes the file when
it ends; a kill leaves it behind, stale.

Shared filesystems: the lock is created by writing a private file and hard-linking it to run.lock.
link() is atomic on NFS (v2/v3 included, where O_EXCL was not) and on Lustre and GPFS; if the reply is
lost, the link count of the private file tells whether it took (the classic NFS lockfile method,
open(2)). flock/fcntl locks are not used: over NFS they depend on the lock daemon and client mount
options, and a lock held by a dead client can linger until the server notices. A holder on another
host is judged alive by its heartbeat, which an NFS client sees within its attribute-cache time
(acregmax, 60 s by default), well inside STALE_AFTER_S.

Who may take over a held lock, each with one line saying so:
- the same Slurm job after a requeue (same job id, another restart count: Slurm ended the old one);
- anyone, when the holder is gone: on the same host its pid no longer runs (or is another process),
  elsewhere its heartbeat is older than STALE_AFTER_S;
- a job resumed at another world size is one of these: the lock names a job, not a world size.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

LOCK_NAME = "run.lock"
HEARTBEAT_S = 30.0  # how often a live holder touches the lock
STALE_AFTER_S = 600.0  # a heartbeat this old means the holder is gone (20 missed beats)


class RunDirInUse(RuntimeError):
    """Another live job holds the run directory."""


def _pid_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), "" if unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


def _me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _pid_start(os.getpid()),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
            "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT", "0"), "since": time.time()}


def describe(holder: dict) -> str:
    """ "job 4242 on gpu07 (pid 311, since 12:03)" or "pid 311 on gpu07 (since 12:03)". """
    since = time.strftime("%H:%M", time.localtime(float(holder.get("since", 0))))
    if holder.get("slurm_job_id"):
        return f"job {holder['slurm_job_id']} on {holder.get('host')} (pid {holder.get('pid')}, since {since})"
    return f"pid {holder.get('pid')} on {holder.get('host')} (since {since})"


def _why_gone(holder: dict, age_s: float, me: dict) -> str:
    """Why the holder no longer counts ("" when it may still be running)."""
    if me["slurm_job_id"] and holder.get("slurm_job_id") == me["slurm_job_id"] \
            and str(holder.get("slurm_restart_count")) != me["slurm_restart_count"]:
        return f"Slurm requeued job {me['slurm_job_id']} (restart {me['slurm_restart_count']})"
    if holder.get("host") == me["host"]:
        pid = int(holder.get("pid", 0))
        if pid == me["pid"]:
            return "it is this process"
        if pid <= 0 or not Path(f"/proc/{pid}").exists():
            return f"pid {pid} is no longer running"
        if holder.get("pid_start") and _pid_start(pid) != holder["pid_start"]:
            return f"pid {pid} is now another process"
        return ""
    if age_s > STALE_AFTER_S:
        return f"its heartbeat is {age_s / 60:.0f} minutes old (limit {STALE_AFTER_S / 60:.0f})"
    return ""


class RunLock:
    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.me = _me()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> str:
        """Take the lock; returns a line to print when it was taken over ("" otherwise).
        Raises RunDirInUse when a live job holds it."""
        message = ""
        for _ in range(3):  # a racing successor can move a stale lock between our reads
            if self._link():
                self._start_heartbeat()
                return message
            holder, age = self._read()
            if holder is None:
                continue  # released (or moved aside) meanwhile: try again
            why = _why_gone(holder, age, self.me)
            if not why:
                raise self._in_use(holder)
            aside = self.path.with_name(f"{LOCK_NAME}.stale.{self.me['host']}.{self.me['pid']}")
            try:
                os.replace(self.path, aside)  # of racing successors, one moves the stale file
            except FileNotFoundError:
                continue
            moved = self._read(aside)[0]
            if moved is not None and moved != holder:  # a racing successor's fresh lock: put it back
                try:
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
                aside.unlink(missing_ok=True)
                raise self._in_use(moved)
            aside.unlink(missing_ok=True)
            message = f"run directory {self.path.parent}: took over the lock of {describe(holder)}: {why}"
        raise RunDirInUse(f"run directory {self.path.parent}: could not take its lock ({self.path}); "
                          "another job is starting there")

    def _in_use(self, holder: dict) -> RunDirInUse:
        return RunDirInUse(f"run directory {self.path.parent} is in use by {describe(holder)}; "
                           "pass another trainer.run_dir")

    def release(self) -> None:
        """Stop the heartbeat and remove the lock, if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder, _ = self._read()
        if holder is not None and holder.get("pid") == self.me["pid"] and holder.get("host") == self.me["host"]:
            self.path.unlink(missing_ok=True)

    def _link(self) -> bool:
        private = self.path.with_name(f"{LOCK_NAME}.{self.me['host']}.{self.me['pid']}")
        private.write_text(json.dumps(self.me))
        try:
            os.link(private, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:
            return private.stat().st_nlink == 2  # NFS: the link may have taken though the reply was lost
        finally:
            private.unlink(missing_ok=True)

    def _read(self, path: Path | None = None) -> tuple[dict | None, float]:
        path = path or self.path
        try:
            text, age = path.read_text(), time.time() - path.stat().st_mtime
        except FileNotFoundError:
            return None, 0.0
        try:
            return json.loads(text), age
        except ValueError:  # unreadable: judged by its heartbeat alone
            return {"host": "?", "pid": 0}, age

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    os.utime(self.path)
                except OSError:
                    pass  # a missed beat; the next one may land
        self._thread = threading.Thread(target=beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()
