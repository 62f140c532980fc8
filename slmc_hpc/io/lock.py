"""`run.lock`: one run at a time in a run directory, and a heartbeat that tells a live run from a dead one.

Rank 0 holds an exclusive `flock` on `run.lock` for the life of the run. The kernel drops it when the
process ends, however it ends (SIGKILL, node failure, SLURM's requeue), so a requeued job takes the
directory over at once, while a second job started on a live directory is refused. The file holds one
JSON record, rewritten in place (the locked inode must stay the same): host, pid, start time, and a
heartbeat (time, phase, progress, rate) that the run refreshes from its step boundaries, about every
HEARTBEAT_SECONDS, never from a thread (a hung run stops beating), and `released` when it ends.

Filesystems without working locks: some NFS and Lustre mounts refuse `flock` (ENOLCK, EOPNOTSUPP); then
the heartbeat decides. A record that was not released, whose heartbeat is younger than its
`stale_after` (3 heartbeat intervals, or 3 steps when one step takes longer), and whose holder is not a
dead pid of this very host, means a live run: refused. Other mounts grant `flock` per node only; so a
record of another host with a fresh heartbeat is watched until it is stale: if it beats, it is refused.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from slmc_hpc.errors import InputError

LOCK_FILE = "run.lock"
HEARTBEAT_SECONDS = 30.0
STALE_FACTOR = 3
RECORD_BYTES = 1024  # the record is padded to this size and rewritten in place
NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
RETRIES = 5  # a `status` probe holds the lock for microseconds: try a few times before refusing


def iso(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


def read_record(path: Path) -> dict | None:
    """The JSON record of a lock file, or None (no file, empty, or unreadable after a few tries)."""
    for _ in range(3):
        try:
            text = path.read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError:
            text = ""
        if not text:
            return None
        try:
            record = json.loads(text)
            return record if isinstance(record, dict) else None
        except ValueError:
            time.sleep(0.05)  # caught mid-rewrite
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def heartbeat_says_live(record: dict | None, now: float, host: str) -> bool:
    """Without an OS lock: does the record belong to a run that still lives (see the module text)?"""
    if not record or record.get("released") is not None:
        return False
    if record.get("host") == host and not pid_alive(int(record.get("pid", 0))):
        return False
    beat = float(record.get("heartbeat", 0.0))
    return now - beat < float(record.get("stale_after", STALE_FACTOR * HEARTBEAT_SECONDS))


def describe_holder(record: dict | None, now: float | None = None) -> str:
    """'host H, pid P, started S, last heartbeat T (N s ago)' for messages."""
    if not record:
        return "an unknown process (no readable record in run.lock)"
    now = time.time() if now is None else now
    beat = record.get("heartbeat")
    age = f" ({now - float(beat):.0f} s ago)" if beat is not None else ""
    return (
        f"host {record.get('host', '?')}, pid {record.get('pid', '?')}, started {iso(record.get('start'))}, "
        f"last heartbeat {iso(beat)}{age}"
    )


def probe(path: Path) -> str:
    """'held' (a live run holds the lock), 'free', 'absent' (no lock file) or 'unsupported' (no OS locks)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return "absent"
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return "held"
    except OSError:
        return "unsupported"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return "free"
    finally:
        os.close(fd)


class RunLock:
    """The exclusive lock of one run directory, held by rank 0 (`acquire`, `beat`, `release`)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None
        self.created = False
        self.os_lock = True
        self.record: dict = {}
        self.last_beat = 0.0

    def acquire(self) -> None:
        """Lock the directory or raise InputError naming the holder; changes no file (see `claim`)."""
        self.created = not self.path.exists()
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._lock()
        except BaseException:
            os.close(self.fd)
            self.fd = None
            if self.created:
                self.path.unlink(missing_ok=True)
            raise

    def claim(self) -> None:
        """Write this run's record (host, pid, start, first heartbeat) once the directory is really ours."""
        self.record = {"host": socket.gethostname(), "pid": os.getpid(), "start": time.time(), "os_lock": self.os_lock}
        self.beat(force=True)

    def _lock(self) -> None:
        for attempt in range(RETRIES):
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == RETRIES - 1:
                    self._refuse(read_record(self.path))
                time.sleep(0.2)
            except OSError as exc:
                if exc.errno not in NO_LOCKS:
                    raise
                self.os_lock = False  # no OS locks here: the heartbeat decides
                record = read_record(self.path)
                if heartbeat_says_live(record, time.time(), socket.gethostname()):
                    self._refuse(record)
                return
        self._watch_foreign(read_record(self.path))

    def _watch_foreign(self, record: dict | None) -> None:
        """Locked, but the record is another host's with a fresh heartbeat: a lock granted per node only?
        Wait until the record is stale; a heartbeat in the meantime means that run lives."""
        host = socket.gethostname()
        if not record or record.get("host") == host or not heartbeat_says_live(record, time.time(), host):
            return
        beat = record.get("heartbeat")
        print(
            f"slmc-hpc: {self.path} was held by {describe_holder(record)}, which never released it; waiting until "
            "its heartbeat is stale, in case locks on this filesystem are per node",
            file=sys.stderr,
            flush=True,
        )
        while heartbeat_says_live(record, time.time(), host):
            time.sleep(1.0)
            latest = read_record(self.path)
            if latest and latest.get("heartbeat") != beat:
                self._refuse(latest)

    def _refuse(self, record: dict | None) -> None:
        raise InputError(
            f"{self.path.parent} is in use by another run ({describe_holder(record)}); two jobs must not share "
            "one output.dir: wait for it to end or stop it (SIGTERM/SIGUSR1), or choose another output.dir"
        )

    def beat(self, force: bool = False, **progress) -> None:
        """Refresh the heartbeat (at most every HEARTBEAT_SECONDS unless `force`) with `progress` fields."""
        now = time.time()
        if self.fd is None or (not force and now - self.last_beat < HEARTBEAT_SECONDS):
            return
        step_seconds = float(progress.pop("step_seconds", 0.0) or 0.0)
        self.record.update(progress)
        self.record["heartbeat"] = now
        self.record["heartbeat_every"] = HEARTBEAT_SECONDS
        self.record["stale_after"] = STALE_FACTOR * max(HEARTBEAT_SECONDS, step_seconds)
        self._write()
        self.last_beat = now

    def _write(self) -> None:
        data = json.dumps(self.record, sort_keys=True).encode()
        os.pwrite(self.fd, data.ljust(max(RECORD_BYTES, len(data) + 1), b" "), 0)

    def release(self, state: str) -> None:
        """Mark the record released (`state`: finished, stopped, failed) and drop the lock."""
        if self.fd is None:
            return
        try:
            self.record.update(released=time.time(), state=state)
            self._write()
        finally:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def abandon(self) -> None:
        """Drop the lock without a trace: this process created the file and wrote nothing else."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.created:
            self.path.unlink(missing_ok=True)
