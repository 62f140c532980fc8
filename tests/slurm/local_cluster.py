"""A real one-node SLURM cluster (munged + slurmctld + slurmd) on this machine, for testing the job templates.

Everything (munge key and socket, slurm.conf, state, spool, logs) lives in one directory, with free ports,
so it never touches the system's munge or SLURM setup and two test sessions do not collide. Clients find
it through SLURM_CONF (see `env`). Also usable by hand:

    python tests/slurm/local_cluster.py up /tmp/myslurm     # prints the `export SLURM_CONF=...` line
    python tests/slurm/local_cluster.py down /tmp/myslurm
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

TEMPLATE = Path(__file__).with_name("slurm.conf.in")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo")


def missing_binaries() -> list[str]:
    return [name for name in DAEMONS if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class LocalSlurm:
    """Start/stop a private SLURM cluster under `root`; `run(cmd)` runs a client command against it."""

    def __init__(self, root: Path, cpus: int | None = None):
        self.root = Path(root).resolve()
        self.host = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        self.conf = self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, *cmd: str, check: bool = True, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
        proc = subprocess.run(cmd, env=kwargs.pop("env", self.env), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> LocalSlurm:
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in ("state", "spool", "munge"):
            (self.root / sub).mkdir(exist_ok=True)
        self.root.chmod(0o755)  # munged wants the socket's directories executable for all
        self._start_munge()
        self.conf.write_text(
            TEMPLATE.read_text().format(
                root=self.root, host=self.host, cpus=self.cpus, ctld_port=_free_port(), slurmd_port=_free_port()
            )
        )
        # -c: cold start, no state from an earlier session.
        self._daemon("slurmctld", "-c", "-f", str(self.conf))
        self._daemon("slurmd", "-f", str(self.conf))
        self.wait_idle(timeout)
        return self

    def _start_munge(self) -> None:
        munge = self.root / "munge"
        key_dir = munge / "key"
        key_dir.mkdir(mode=0o700, exist_ok=True)
        key = key_dir / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o600)
        munge.chmod(0o755)
        if self._alive(munge / "munged.pid"):
            return
        subprocess.run(
            [
                _binary("munged"),
                "--force",
                f"--key-file={key}",
                f"--socket={munge / 'munge.sock'}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            check=True,
            capture_output=True,
        )

    def _daemon(self, name: str, *args: str) -> None:
        """Start a SLURM daemon (it forks and writes its pid file) and fail loudly with its log if it dies."""
        proc = subprocess.run([_binary(name), *args], env=self.env, capture_output=True, text=True)
        if proc.returncode != 0:
            log = self.root / f"{name}.log"
            tail = log.read_text()[-3000:] if log.exists() else ""
            raise RuntimeError(f"{name} failed to start ({proc.returncode}): {proc.stderr}\n{tail}")

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            proc = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
            state = proc.stdout.strip()
            if state.startswith("idle"):
                return
            time.sleep(0.5)
        logs = "".join((self.root / f"{d}.log").read_text()[-2000:] for d in ("slurmctld", "slurmd") if d)
        raise RuntimeError(f"node not idle after {timeout} s (state {state!r}):\n{logs}")

    @staticmethod
    def _alive(pid_file: Path) -> int | None:
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        """Stop our own daemons by the pids in their pid files (never by name)."""
        if self.conf.exists():
            self.run("scancel", "--full", "-u", "root", check=False)
        for pid_file in (self.root / "slurmd.pid", self.root / "slurmctld.pid", self.root / "munge" / "munged.pid"):
            pid = self._alive(pid_file)
            if pid is None:
                continue
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                if self._alive(pid_file) is None:
                    break
                time.sleep(0.1)

    # -- jobs ----------------------------------------------------------------------------------------------
    def sbatch(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> int:
        proc = subprocess.run(
            ["sbatch", "--parsable", *args], env=env or self.env, capture_output=True, text=True, cwd=cwd, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed: {proc.stdout}{proc.stderr}")
        return int(proc.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...); {} once the job is forgotten."""
        proc = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        if proc.returncode != 0:
            return {}
        return dict(re.findall(r"(\w+)=(\S*)", proc.stdout))

    def wait_job(self, job_id: int, timeout: float, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")) -> dict:
        """Poll until the job reaches one of `states` (final by default); returns its last record."""
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(1)
        raise TimeoutError(f"job {job_id} not in {states} after {timeout} s: {info}")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("up", "down"):
        print(__doc__)
        return 2
    cluster = LocalSlurm(Path(argv[2]))
    if argv[1] == "up":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
