"""Starting a launched cluster's worker job, and watching it until it ends.

In launched mode (see :mod:`drizzle_ml.cluster`) the workers are a separate
``mpiexec -n W`` job. :class:`LaunchedJob` starts it (the command, its
environment inside a Slurm step), joins it through an MPI port
(``Open_port``/``Accept`` here, ``Connect`` in each worker, then ``Merge``),
passes the workers' output through with MPICH Hydra's notices held back
(:mod:`drizzle_ml.hydra`), notes which worker died first and how, and kills
or waits for the job at the end. The functions say how this process itself
was started (an ``mpiexec`` world, a Slurm allocation or step) and find
``mpiexec``; the command line (``drizzle_ml.launch``) uses them too.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from mpi4py import MPI

from .errors import WorkerFailedError
from .hydra import OutputFilter, show_notices
from .waiting import WaitPolicy, WaitTimeout, poll


def die_with_parent() -> None:
    """In a child before exec (``preexec_fn``): SIGTERM when its parent dies, even by SIGKILL (Linux).

    For ``mpiexec`` children, which then stop their ranks themselves: a
    killed launcher or notebook kernel must not leave a job running under
    init (training, holding a --serve port).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before the prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the job outlives a killed parent
        pass


def launched_by_mpiexec() -> bool:
    """True when this process is one rank of a multi-rank ``mpiexec`` world."""
    if os.environ.get("DRIZZLE_ROLE") == "worker-job":
        return False
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"):
        if var in os.environ:
            try:
                return int(os.environ[var]) > 1
            except ValueError:
                return False
    return False


def slurm_allocation_tasks() -> int | None:
    """``SLURM_NTASKS`` where this process runs in a Slurm allocation but in no step; else None.

    That is an ``sbatch`` script or an ``salloc`` shell: the allocation's
    tasks are ours to use, and MPICH's Hydra (``mpiexec``) places its ranks
    on them through ``srun``. Inside a step (``srun``, or the ranks Hydra
    starts that way) Slurm sets ``SLURM_STEP_NUM_TASKS``, and the step's
    tasks are already in use.
    """
    if "SLURM_JOB_ID" not in os.environ or "SLURM_STEP_NUM_TASKS" in os.environ:
        return None
    try:
        return int(os.environ["SLURM_NTASKS"])
    except (KeyError, ValueError):  # an allocation asked for by nodes or CPUs, not tasks
        return None


def slurm_world_mismatch() -> str | None:
    """Why this process must not go on: ``srun`` started several tasks, but each is an MPI world of 1.

    That happens under ``srun --mpi=none`` (or a PMI the MPI library does not
    speak). Each task would then start a worker job of its own, whose
    ``srun`` waits for CPUs the step already holds: a hang, not a run.
    """
    try:
        tasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", "1"))
    except ValueError:
        return None
    if tasks <= 1 or MPI.COMM_WORLD.Get_size() > 1:
        return None
    return (f"srun started {tasks} tasks but each is an MPI world of 1: launch with srun --mpi=pmi2 "
            "(see docs/cluster.md)")


def hydra_environment(env: dict[str, str], mpiexec_args: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """``env`` for an ``mpiexec`` started inside a Slurm step: Hydra's ``srun`` may share the step's CPUs.

    A step (``srun -n 1 drizzle-ml train``, a script under ``srun``, a rank
    of Hydra's own job) holds its nodes' CPUs, Slurm's default; the ``srun``
    that Hydra runs to start its proxies would wait for them forever.
    ``--overlap`` lets that nested step share them. Not added where another
    launcher than Slurm's was chosen (``HYDRA_LAUNCHER``, ``-launcher`` or
    ``-bootstrap`` in ``mpiexec_args``): ssh would not understand it.
    """
    if "SLURM_JOB_ID" not in env or "SLURM_STEP_NUM_TASKS" not in env:
        return env
    args = list(mpiexec_args)
    chosen = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-launcher", "-bootstrap")]
    if any(launcher != "slurm" for launcher in [env.get("HYDRA_LAUNCHER", "slurm"), *chosen]):
        return env
    extra = env.get("HYDRA_LAUNCHER_EXTRA_ARGS", "")
    if "--overlap" not in extra.split():
        env["HYDRA_LAUNCHER_EXTRA_ARGS"] = f"{extra} --overlap".strip()
    return env


def find_mpiexec() -> str:
    """``$DRIZZLE_MPIEXEC`` if set, else ``mpiexec`` next to this interpreter (the ``mpich`` wheel), else on PATH."""
    chosen = os.environ.get("DRIZZLE_MPIEXEC")
    if chosen:
        found = shutil.which(chosen)
        if found is None:
            raise FileNotFoundError(f"mpiexec not found: DRIZZLE_MPIEXEC={chosen} is not an executable")
        return found
    here = os.path.dirname(sys.executable)
    found = shutil.which("mpiexec", path=here + os.pathsep + os.environ.get("PATH", ""))
    if found is None:
        raise FileNotFoundError(
            "mpiexec not found next to the Python interpreter or on PATH; "
            "install the 'mpich' wheel (pip install mpich) or a system MPI"
        )
    return found


class LaunchedJob:
    """The worker job of a launched cluster: ``mpiexec -n W python -m drizzle_ml.worker --connect PORT``.

    :meth:`start` starts it and returns the driver's communicator with the
    workers (the driver is rank 0). The job's output passes through to this
    process's; Hydra's notices are held in ``notices`` and :meth:`show_notices`
    puts them on stderr after a failure. :meth:`death` says which worker died
    once the job has ended; :meth:`kill` and :meth:`close` end it.
    """

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.output_tail: deque[str] = deque(maxlen=200)
        self.notices: deque[str] = deque(maxlen=100)  # Hydra's, held back unless a failure needs them
        self.deaths: list[int] = []  # workers in the order they were seen to die
        self._pumps: list[threading.Thread] = []
        self._intercomm: MPI.Intercomm | None = None
        self._comm: MPI.Intracomm | None = None
        self._ended = False
        self._watching = False  # a thread notes the workers' deaths (see watch_deaths)

    @property
    def pid(self) -> int | None:
        """The ``mpiexec`` process's pid (None before :meth:`start`)."""
        return None if self.process is None else self.process.pid

    # -- start-up -------------------------------------------------------------------
    def start(self, n_workers: int, timeout: float, mpiexec_args: list[str],
              start_timeout: float) -> MPI.Intracomm:
        """Start ``n_workers`` workers and join them within ``start_timeout`` s; their communicator.

        ``timeout`` is the cluster's, for the workers' own waits. Raises
        :class:`WorkerFailedError` (the job killed, its notices shown) when
        the job exits or does not connect in time.
        """
        mpiexec = find_mpiexec()
        port = MPI.Open_port()
        env = dict(os.environ)
        env.update(
            DRIZZLE_ROLE="worker-job",
            DRIZZLE_DRIVER_HOST=socket.gethostname(),
            DRIZZLE_TIMEOUT=str(timeout),
            UCX_LOG_LEVEL=env.get("UCX_LOG_LEVEL", "error"),
        )
        cmd = [mpiexec, "-print-all-exitcodes", "-n", str(n_workers), *mpiexec_args, sys.executable, "-m",
               "drizzle_ml.worker", "--connect", port, "--driver-pid", str(os.getpid())]
        self.process = subprocess.Popen(
            cmd, env=hydra_environment(env, mpiexec_args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True, preexec_fn=die_with_parent,
        )
        # Workers' output passes through here to ours; Hydra's notices (exit
        # codes, the banner naming a dead process) are held back: kept for
        # diagnosis and shown on stderr only when the job failed.
        self._pumps = [
            threading.Thread(target=OutputFilter(name, self.notices, self.output_tail).pump,
                             args=(pipe,), daemon=True)
            for name, pipe in (("stdout", self.process.stdout), ("stderr", self.process.stderr))
        ]
        for pump in self._pumps:
            pump.start()
        accepted: list[MPI.Intercomm] = []

        def accept() -> None:
            try:
                accepted.append(MPI.COMM_SELF.Accept(port))
            except MPI.Exception:  # the connection made below only to end the wait may be refused
                pass

        acceptor = threading.Thread(target=accept, daemon=True)
        acceptor.start()
        try:
            poll(lambda: accepted or self.process.poll() is not None,
                 WaitPolicy(timeout=start_timeout, spin=0.0, max_sleep=0.02))
        except WaitTimeout:
            pass
        if not accepted:
            # Unblock the pending Accept, then give up. The connection comes from another process:
            # connecting to ourselves from this thread waits forever for the lock the Accept holds.
            _connect_and_leave(port)
            acceptor.join(timeout=30.0)
            if not acceptor.is_alive():  # else MPI is busy in that thread: leave the port as it is
                if accepted:
                    accepted[0].Disconnect()
                MPI.Close_port(port)
            exited = self.process.poll() is not None
            self.kill()
            diagnosis = self.diagnosis()
            self.show_notices()
            what = "exited before it connected" if exited else f"did not connect within {start_timeout:g} s"
            raise WorkerFailedError(f"the worker job {what}" + diagnosis)
        acceptor.join()
        MPI.Close_port(port)
        self._intercomm = accepted[0]
        self._comm = self._intercomm.Merge(high=False)
        return self._comm

    # -- output -----------------------------------------------------------------------
    def show_notices(self) -> None:
        """After a failure: Hydra's notices about the worker job, on stderr, once."""
        self._join_pumps()
        show_notices(self.notices)

    def _join_pumps(self) -> None:
        for pump in self._pumps:
            pump.join(timeout=2.0)

    def diagnosis(self) -> str:
        """`` (worker job exit code N): <its last lines>``, as far as known."""
        self._join_pumps()
        tail = "".join(self.output_tail)
        code = self.process.poll() if self.process is not None else None
        if code is not None:
            detail = f" (worker job exit code {code})"
        else:
            detail = ""
        lines = [ln for ln in tail.splitlines() if ln.strip() and not ln.startswith("=")]
        return detail + (": " + " | ".join(lines[-5:]) if lines else "")

    # -- liveness ---------------------------------------------------------------------
    def _await_first_death(self, timeout: float = 2.0) -> None:
        """Once the job has ended: give the watching thread time to note the first death.

        On a busy host it may not have run yet, and Hydra's notice may name a
        victim of its clean-up instead.
        """
        deadline = time.monotonic() + timeout
        while self._watching and not self.deaths and time.monotonic() < deadline:
            time.sleep(0.01)

    def watch_deaths(self, workers: Sequence[Any]) -> None:
        """Note in ``deaths`` the order in which this host's ``workers`` (``Hello``s) exit.

        When one worker dies, Hydra kills the others within milliseconds, and
        its notice may then name a victim of that clean-up; a process file
        descriptor per worker wakes this thread at the first death.
        """
        here = socket.gethostname()
        fds: dict[int, int] = {}
        for hello in workers:
            if hello.host != here or not hasattr(os, "pidfd_open"):
                continue
            try:
                fds[os.pidfd_open(hello.pid)] = hello.worker
            except OSError:  # already gone, or pidfds unsupported
                continue
        if not fds:
            return

        def watch() -> None:
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            try:
                while fds and not self._ended:
                    for fd, _ in poller.poll(500):
                        self.deaths.append(fds.pop(fd))
                        poller.unregister(fd)
                        os.close(fd)
            finally:
                for fd in fds:
                    os.close(fd)

        self._watching = True
        threading.Thread(target=watch, name="drizzle-death-watch", daemon=True).start()

    def death(self, workers: Sequence[Any]) -> tuple[str, int | None] | None:
        """None while the job runs; once it has ended, what ended it: ``(message, worker or None)``.

        ``workers`` are the workers' ``Hello``s, in worker order.
        """
        if self.process is None or self.process.poll() is None:
            return None
        self._join_pumps()
        self._await_first_death()
        tail = "".join(self.output_tail)
        dead = re.search(r"PID (\d+) RUNNING AT (\S+)\s*\n=\s*EXIT CODE: (\d+)", tail)
        codes = re.search(r"Exit codes: \[[^\]]+\] ([\d,]+)\s*$", tail, re.MULTILINE)
        worker = None
        if self.deaths:  # the first death this host saw, not a victim of the clean-up
            worker = self.deaths[0]
            hello = workers[worker]
            rank_codes = codes.group(1).split(",") if codes else []
            code = int(rank_codes[worker]) if worker < len(rank_codes) else None
            dead_pid, dead_host = hello.pid, hello.host
        elif dead:
            dead_pid, dead_host, code = int(dead.group(1)), dead.group(2), int(dead.group(3))
            worker = next((h.worker for h in workers if h.pid == dead_pid), None)
        if worker is not None or dead:
            who = f"worker {worker}" if worker is not None else "a worker"
            if code is None:
                how = "exited"
            elif 0 < code < 32:
                how = f"killed by {signal.Signals(code).name}"
            else:
                how = f"exit code {code}"
            return f"{who} (pid {dead_pid} on {dead_host}) died ({how})", worker
        return f"the worker job exited{self.diagnosis()}", None

    # -- the end ----------------------------------------------------------------------
    def close(self) -> None:
        """After the workers said goodbye: leave their communicator and wait for the job (bounded)."""
        self._ended = True
        try:
            self._comm.Free()
            self._intercomm.Disconnect()
        finally:
            self.wait(10.0)

    def kill(self) -> None:
        """End the job now: SIGTERM (and SIGCONT, for a stopped worker) to its process group, then wait."""
        self._ended = True
        if self.process is None:
            return
        if self.process.poll() is not None:
            self._close_pipes()
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            os.killpg(self.process.pid, signal.SIGCONT)  # a stopped (hung) worker must see it
        except ProcessLookupError:
            pass  # gone already: reaped below
        self.wait(5.0)

    def wait(self, timeout: float) -> None:
        """Wait ``timeout`` s for the job to exit, then SIGKILL its process group."""
        if self.process is None:
            return
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=5.0)
        self._close_pipes()

    def _close_pipes(self) -> None:
        """Once the job's output is read to its end: close the pipes it came through."""
        self._join_pumps()
        if any(pump.is_alive() for pump in self._pumps):
            return  # still reading (a process of the job outlived it): the pump owns the pipe
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


def _connect_and_leave(port: str) -> None:
    """Connect to ``port`` from a new process and disconnect at once: an ``Accept`` there returns."""
    code = "import sys\nfrom mpi4py import MPI\nMPI.COMM_WORLD.Connect(sys.argv[1]).Disconnect()\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "DRIZZLE_"))}
    try:
        subprocess.run([sys.executable, "-c", code, port], env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, preexec_fn=die_with_parent)
    except subprocess.TimeoutExpired:  # the caller waits on the Accept a bounded time and gives up
        pass
