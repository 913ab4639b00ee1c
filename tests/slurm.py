"""A private single-node Slurm for tests: munge, a controller and a node daemon in a temporary directory.

Debian's ``slurm-wlm`` and ``munge`` packages (``.ci/run`` installs them
where it can). Everything lives in one temporary directory: the munge key
and socket, ``slurm.conf`` (passed to daemons and clients as
``SLURM_CONF``), the state and spool directories, pid and log files. The
ports are free ones picked at start-up, so nothing is shared with a Slurm
that may already run on the machine. The node is this machine under its
short hostname, reachable at 127.0.0.1, with at least 4 CPUs declared
(``SlurmdParameters=config_overrides``), so that a driver and two workers
fit on a 2-core machine.

:meth:`Slurm.close` cancels the jobs, stops the daemons and kills whatever
is left (processes carrying this cluster's ``SLURM_CONF`` or holding a file
in its directory, such as a ``slurmstepd``, which detaches from ``slurmd``),
then removes the directory.

Run by hand (as root, from the repository): ``python -m tests.slurm CMD...``
runs CMD with ``SLURM_CONF`` set and stops the cluster after it; without CMD
it prints the ``export`` line and waits for Enter.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Seconds any single start-up step or client command may take.
TIMEOUT = 30.0
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "sinfo", "scontrol", "scancel", "squeue")
WORKDIR_PREFIX = "drizzle-slurm-"


def _which(name: str) -> str | None:
    # The daemons live in /usr/sbin, which is not on every PATH.
    return shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin")


def unavailable() -> str | None:
    """Why a private Slurm cannot run here (a skip reason), or None when it can."""
    if os.geteuid() != 0:
        return "a private slurmd needs root (it starts jobs as their user)"
    missing = [name for name in DAEMONS + CLIENTS if _which(name) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)"
    return None


def outside_slurm() -> dict[str, str]:
    """This process's environment without Slurm's variables: what a run outside any allocation sees."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):  # all held open at once, so the ports differ
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Slurm:
    """A started single-node Slurm; ``env`` is the environment its clients (and tests) need."""

    def __init__(self, cpus: int = 4):
        reason = unavailable()
        if reason:
            raise RuntimeError(f"no private Slurm: {reason}")
        self.dir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        self.dir.chmod(0o755)  # munged wants its socket's directories searchable by all
        self.node = socket.gethostname().split(".")[0]
        self.cpus = max(cpus, os.cpu_count() or 1)
        self.conf = self.dir / "slurm.conf"
        # Not a word of a Slurm this process may itself run under (a test run in a real job).
        self.env = dict(outside_slurm(), SLURM_CONF=str(self.conf))
        self._daemons: list[subprocess.Popen] = []
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # -- start-up ---------------------------------------------------------------------
    def _start(self) -> None:
        d = self.dir
        for sub in ("state", "spool"):
            (d / sub).mkdir()
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)  # munged refuses a key others can read
        socket_path = d / "munge.socket"
        self._spawn("munged", [_which("munged"), "--foreground", f"--key-file={key}",
                               f"--socket={socket_path}", f"--pid-file={d / 'munged.pid'}",
                               f"--seed-file={d / 'munged.seed'}", f"--log-file={d / 'munged.log'}"])
        self._wait(lambda: socket_path.exists(), "munged's socket")
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text(self._config(socket_path, ctld_port, slurmd_port))
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i"])
        self._wait(lambda: self._client(["scontrol", "ping"]).returncode == 0, "slurmctld to answer")
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.node])
        self._wait(lambda: self._client(["sinfo", "-h", "-n", self.node, "-o", "%t"]).stdout.strip() == "idle",
                   f"node {self.node} to be idle")

    def _config(self, munge_socket: Path, ctld_port: int, slurmd_port: int) -> str:
        d = self.dir
        return "\n".join([
            "ClusterName=drizzle",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # A requeued job may start again cred_expire seconds after (default 120).
            f"AuthInfo=socket={munge_socket},cred_expire=5",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'slurmd.pid'}",
            f"SlurmctldLogFile={d / 'slurmctld.log'}",
            f"SlurmdLogFile={d / 'slurmd.log'}",
            # No cgroups: a container may not let us have them, and the tests need no limits.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/builtin",
            "SchedulerParameters=sched_interval=1",  # a requeued job starts when eligible, not a minute on
            "MpiDefault=none",
            "ReturnToService=2",
            # The node declares more CPUs than a small machine has: a driver and 2 workers fit on 2 cores.
            "SlurmdParameters=config_overrides",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "MailProg=/bin/true",
            "KillWait=2",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            f"PartitionName=main Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
            "",
        ])

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.dir / f"{name}.out", "wb")
        with out:
            self._daemons.append(subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                                  stderr=subprocess.STDOUT, start_new_session=True))

    def _wait(self, ready, what: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self._daemons:
                if proc.poll() is not None:
                    raise RuntimeError(f"{Path(proc.args[0]).name} exited ({proc.returncode}) while waiting for "
                                       f"{what}: {self.log_tail(Path(proc.args[0]).name)}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")

    def log_tail(self, name: str, lines: int = 5) -> str:
        """The last lines a daemon wrote (its log file, else its captured output), for messages."""
        for path in (self.dir / f"{name}.log", self.dir / f"{name}.out"):
            if path.exists() and path.stat().st_size:
                return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
        return "(no output)"

    # -- use ----------------------------------------------------------------------------
    def _client(self, cmd: list[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)

    def run(self, cmd: list[str], timeout: float = 120.0, env: dict[str, str] | None = None,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        """Run a command (``srun ...``, ``sbatch ...``) against this cluster; output captured as text."""
        return subprocess.run(cmd, env=dict(self.env, **(env or {})), capture_output=True, text=True,
                              timeout=timeout, cwd=cwd)

    def submit(self, script: str | Path, *options: str, cwd: str | Path | None = None) -> int:
        """Submit ``script`` without waiting; the job id."""
        proc = self.run(["sbatch", "--parsable", *options, str(script)], timeout=TIMEOUT, cwd=cwd)
        if proc.returncode:
            raise RuntimeError(f"sbatch failed ({proc.returncode}): {proc.stderr.strip()}")
        return int(proc.stdout.strip().split(";")[0])

    def job(self, job: int) -> dict[str, str]:
        """``scontrol show job``'s fields (JobState, Restarts, ExitCode, ...)."""
        out = self._client(["scontrol", "show", "job", "--oneliner", str(job)]).stdout
        return dict(field.split("=", 1) for field in out.split() if "=" in field)

    def wait_job(self, job: int, timeout: float = 120.0) -> dict[str, str]:
        """Wait until ``job`` has ended (a requeued job runs again first); its fields then."""
        ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL")
        self._wait(lambda: self.job(job).get("JobState") in ended, f"job {job} to end", timeout)
        return self.job(job)

    def steps_launched(self, job: int) -> list[str]:
        """Step ids ``slurmd`` launched for ``job`` (from its log), e.g. ``['7.0']``."""
        text = (self.dir / "slurmd.log").read_text(errors="replace")
        return re.findall(rf"launch task StepId=({job}\.\d+)", text)

    # -- teardown -----------------------------------------------------------------------
    def close(self) -> None:
        """Cancel every job, stop the daemons, kill anything left, remove the directory. Idempotent."""
        if not self._daemons and not self.dir.exists():
            return
        if self.conf.exists() and all(p.poll() is None for p in self._daemons):
            try:
                self._client(["scancel", "--full", "--user", "root"], timeout=10.0)
                deadline = time.monotonic() + 10.0
                while time.monotonic() < deadline and self._client(["squeue", "-h"], timeout=10.0).stdout.strip():
                    time.sleep(0.2)
            except (subprocess.TimeoutExpired, OSError):
                pass
        for proc in reversed(self._daemons):
            _stop(proc)
        self._daemons = []
        for pid in self._leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def _leftovers(self) -> list[int]:
        """Processes of this cluster still alive: with its SLURM_CONF, or a file open in its directory."""
        marker = f"SLURM_CONF={self.conf}".encode()
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                if marker in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    found.append(int(entry))
                    continue
                for fd in os.listdir(f"/proc/{entry}/fd"):
                    if os.readlink(f"/proc/{entry}/fd/{fd}").startswith(str(self.dir) + os.sep):
                        found.append(int(entry))
                        break
            except OSError:  # gone, or not ours to look at
                continue
        return found

    def __enter__(self) -> Slurm:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10.0)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def main(argv: list[str]) -> int:
    with Slurm() as slurm:
        if argv:
            return subprocess.run(argv, env=slurm.env).returncode
        print(f"Slurm is up (node {slurm.node}, {slurm.cpus} CPUs); in another shell:\n"
              f"  export SLURM_CONF={slurm.conf}\nPress Enter to stop it.")
        try:
            input()
        except EOFError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
