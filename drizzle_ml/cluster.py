"""The driver's view of a set of workers: the control channel to them, and how they stop.

Two ways to get one, one engine:

* **World mode.** Under ``mpiexec -n W+1`` rank 0 is the driver and ranks
  1..W serve as workers (they do so as soon as they import :mod:`drizzle_ml`).
  ``Cluster()`` on rank 0 attaches to them.
* **Launched mode.** From a plain Python process, ``Cluster(n_workers=W)``
  starts a worker job with ``mpiexec -n W`` and joins it through an MPI port
  (``Open_port``/``Accept``/``Connect``, then ``Merge`` so that the driver is
  rank 0 here too). A separate job rather than ``COMM_SELF.Spawn``: under
  MPICH's Hydra a spawned child's death kills its singleton parent, and a
  notebook must survive a dead worker with a clear exception. Starting,
  watching and killing that job is :mod:`drizzle_ml.worker_job`'s.

On the control channel the driver broadcasts pickled control messages,
collects the workers' reports, and waits (bounded, noticing dead workers);
jobs take turns, one at a time.
"""

from __future__ import annotations

import atexit
import os
import socket
import sys
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
from mpi4py import MPI

from . import protocol as P
from .doorbell import Doorbell, bell_address
from .errors import ClusterClosedError, LaunchError, WorkerError, WorkerFailedError, WorkerTimeoutError
from .waiting import WaitPolicy, WaitTimeout, look_twice, poll, timeout_from_env
from .worker_job import LaunchedJob, launched_by_mpiexec, slurm_allocation_tasks, slurm_world_mismatch

_open_clusters: weakref.WeakSet[Cluster] = weakref.WeakSet()
_world_cluster: Cluster | None = None

#: Partitions kept per worker before the least recently used one is dropped.
CACHE_DATASETS = 4
#: Reports to receive before the driver trusts that workers' rings reach it.
RELIABLE_AFTER = 8


#: Seconds the driver receives a report's large arrays without sleeping (see _receive_out_of_band).
OUT_OF_BAND_SPIN = 2.0


class Cluster:
    """A driver and ``n_workers`` worker processes, reused across jobs.

    Parameters
    ----------
    n_workers : int or None
        Workers to launch. ``None``: in world mode all ranks but 0; in a
        Slurm allocation (an ``sbatch`` script) its tasks minus one, the
        driver's; otherwise the machine's core count.
    timeout : float or None
        Seconds any single wait may last without progress before a worker is
        declared failed (a group's wait adds its expected duration). None:
        ``$DRIZZLE_TIMEOUT``, else 60 (so the estimators' and the command
        line's clusters follow the variable).
    fanout : int
        Children per node of the reduce tree.
    mpiexec_args : sequence of str
        Extra arguments for ``mpiexec`` in launched mode (e.g. ``-hosts``).
    start_timeout : float
        Seconds to wait for launched workers to connect.

    Use as a context manager, or call :meth:`close`; clusters still open at
    interpreter exit are closed then.
    """

    def __init__(
        self,
        n_workers: int | None = None,
        *,
        timeout: float | None = None,
        fanout: int = 4,
        mpiexec_args: tuple[str, ...] | list[str] = (),
        start_timeout: float = 120.0,
    ):
        global _world_cluster
        if n_workers is not None and (not isinstance(n_workers, int) or n_workers < 1):
            raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
        timeout = timeout_from_env() if timeout is None else timeout
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if fanout < 1:
            raise ValueError(f"fanout must be >= 1, got {fanout!r}")
        problem = slurm_world_mismatch()  # before anything is started: a worker job here would hang
        if problem:
            raise LaunchError(problem)
        self.timeout, self.fanout = float(timeout), int(fanout)
        self._closed = False
        self._broken: str | None = None
        self._replaced_by: int | None = None  # get_cluster replaced this default cluster by one of that size
        self.doorbell = Doorbell()
        self._bells: list[tuple[str, int] | None] = []  # worker w's doorbell address, once known
        self._job: LaunchedJob | None = None  # launched mode's worker job
        self._job_seq = 0
        # One job at a time: threads that share a cluster take turns (a job's
        # messages on the control channel are not tagged by thread).
        self._turn = threading.RLock()
        self._loaded: OrderedDict[str, int] = OrderedDict()
        # Reports that arrived before anyone asked for them: with groups sent
        # ahead, a fast worker can finish group g+1 while group g is collected.
        self._backlog: list[Any] = []
        self._reports_in = 0  # reports received (each rings the driver), to judge the rings
        self._aborted: set[int] = set()
        self.workers: list[P.Hello] = []
        if launched_by_mpiexec():
            if MPI.COMM_WORLD.Get_rank() != 0:
                raise RuntimeError("Cluster() can only be created on rank 0 (the driver)")
            if _world_cluster is not None and not _world_cluster._closed:
                raise RuntimeError("this mpiexec world already has a Cluster; use get_cluster()")
            available = MPI.COMM_WORLD.Get_size() - 1
            if n_workers is not None and n_workers != available:
                raise ValueError(
                    f"n_workers={n_workers} but mpiexec started {available} workers "
                    f"(-n {available + 1}); pass n_workers=None or match -n"
                )
            self.mode = "world"
            self.ctrl = MPI.COMM_WORLD
            self.n_workers = available
            _world_cluster = self
        else:
            self.mode = "launched"
            tasks = slurm_allocation_tasks()
            # In an allocation, Hydra places the worker job on its tasks; the driver holds one of them.
            self.n_workers = n_workers or (tasks - 1 if tasks and tasks > 1 else os.cpu_count() or 1)
            self._job = LaunchedJob()
            self.ctrl = self._job.start(self.n_workers, self.timeout, list(mpiexec_args), start_timeout)
        self._large_status = MPI.Status()
        ctrl = self.ctrl
        self._probe_any = lambda: ctrl.Iprobe(source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG)
        ranks_here = self.n_workers + 1 if self.mode == "launched" else int(
            os.environ.get("MPI_LOCALNRANKS", self.n_workers + 1)
        )
        self.policy = WaitPolicy.for_ranks(ranks_here, self.timeout)
        #: The driver shares this host's cores with its workers: its CPU time is theirs lost.
        self.shares_cores = ranks_here > (os.cpu_count() or 1)
        _open_clusters.add(self)
        try:
            self._collect(lambda m: isinstance(m, P.Hello), self.n_workers, "start-up", timeout=start_timeout)
            self.workers.sort(key=lambda h: h.worker)
            self.broadcast(P.Doorbells((socket.gethostname(), self.doorbell.port),
                                       [(h.host, h.doorbell) for h in self.workers]))
        except BaseException:
            self._teardown()
            raise
        self._bells = [bell_address(h.host, h.doorbell) for h in self.workers]
        self.replicated_updates = _replicate_updates(self.workers)
        self.reduction = _reduction_choice()
        if self._job is not None:
            self._job.watch_deaths(self.workers)

    # -- liveness ---------------------------------------------------------------------
    def _check_alive(self) -> None:
        death = self._job.death(self.workers) if self._job is not None else None
        if death is not None:
            message, worker = death
            self._fail(WorkerFailedError(message + "; the cluster has been shut down", worker))

    def _fail(self, exc: BaseException) -> None:
        self._broken = str(exc)
        self._teardown()
        if self._job is not None:
            self._job.show_notices()
        raise exc

    # -- messaging ---------------------------------------------------------------------
    def _require_open(self) -> None:
        if self._closed:
            if self._replaced_by is not None:
                raise ClusterClosedError(
                    f"the default cluster of {self.n_workers} workers was closed: a fit asked for "
                    f"n_workers={self._replaced_by} (in another thread?) and replaced it. Threads that fit "
                    "at once must use the same n_workers (their jobs then take turns)")
            raise ClusterClosedError(
                "the cluster is closed" + (f" after a failure: {self._broken}" if self._broken else "")
            )

    def broadcast(self, message: Any, workers: range | list[int] | None = None, ring: bool = True) -> None:
        """Send one pickled control message to each worker (pickled once).

        ``ring=False`` where the workers are known to be busy: they will look
        for the message before they sleep.
        """
        self._require_open()
        payload = MPI.pickle.dumps(message)
        targets = range(self.n_workers) if workers is None else workers
        requests = [self.ctrl.Isend([payload, MPI.BYTE], dest=w + 1, tag=P.TAG_CTRL) for w in targets]
        if ring:
            self.ring(targets)
        self._complete(requests, "control message delivery")

    def send_buffers(self, worker: int, buffers: list) -> None:
        requests = [self.ctrl.Isend(buf, dest=worker + 1, tag=P.TAG_DATA) for buf in buffers]
        self.ring([worker])
        self._complete(requests, f"sending a partition to worker {worker}")

    def ring(self, workers: range | list[int]) -> None:
        """Wake ``workers`` that may be sleeping on a message just sent (see :mod:`drizzle_ml.doorbell`)."""
        for w in workers:
            if w < len(self._bells):
                self.doorbell.ring(self._bells[w])

    def _complete(self, requests: list[MPI.Request], what: str) -> None:
        if not requests or MPI.Request.Testall(requests):
            return
        self.wait(lambda: MPI.Request.Testall(requests), what)

    def wait(self, test: Callable[[], Any], what: str, *, first_sleep: float = 0.0,
             extra: float = 0.0, timeout: float | None = None, watch_reports: bool = False,
             max_sleep: float | None = None, bell: bool = False, spin: float | None = None,
             silent: Callable[[], list[int]] | None = None) -> Any:
        """Poll ``test`` under the cluster's policy, checking the workers are alive.

        The limit is ``timeout`` if given, else the cluster's timeout plus
        ``extra``. With ``watch_reports``, workers' error reports are raised
        while waiting (other reports are kept for later). ``max_sleep`` caps
        the sleeps between tests (default: the policy's). ``bell``: see
        :func:`~drizzle_ml.waiting.poll` (only where every awaited message rings).
        ``spin``: seconds of testing before the first sleep (default: the policy's).
        ``silent``: the workers still unheard from, named when the wait times out.
        """
        limit = self.timeout + extra if timeout is None else timeout
        try:
            return poll(test, self.policy, on_idle=self._watch if watch_reports else self._check_alive,
                        first_sleep=first_sleep, timeout=limit, max_sleep=max_sleep, sleep=self.doorbell.sleep,
                        bell=bell, spin=spin)
        except WaitTimeout:
            missing = silent() if silent is not None else None
            detail = "" if missing is None else f" (no answer from worker {', '.join(map(str, missing)) or '?'})"
            self._fail(WorkerTimeoutError(
                f"timed out after {limit:.3g} s waiting for {what}; the cluster has been shut down{detail}",
                missing[0] if missing else None))

    def _next_report(self) -> Any:
        """The next report that has arrived, or None. A worker's error report is raised."""
        while True:
            # Most polls find nothing: one probe of any tag answers that in one MPI call.
            if not look_twice(self._probe_any):
                return None
            msg = self.ctrl.improbe(source=MPI.ANY_SOURCE, tag=P.TAG_REPORT)
            if msg is not None:
                obj = msg.recv()
            else:
                msg = self.ctrl.improbe(source=MPI.ANY_SOURCE, tag=P.TAG_REPORT_LARGE, status=self._large_status)
                if msg is None:
                    return None
                obj = self._receive_out_of_band(msg, self._large_status.Get_source())
            if isinstance(obj, P.Hello):
                self.workers.append(obj)
            else:
                self._reports_in += 1
            if not isinstance(obj, P.ErrorReport):
                return obj
            if obj.job in self._aborted:
                continue  # a second worker failing in a job already aborted
            if obj.failed:
                # A worker timed out waiting on a peer before this driver's own (longer) wait
                # ran out: the peer is hung or dead, so the cluster is as broken as after a
                # timeout here. Keeping it would leave the hung rank to block the next job, and
                # the exit of an mpiexec world, for ever.
                self._check_alive()  # a dead worker is named by its death
                self._fail(WorkerTimeoutError(f"{obj.message}; the cluster has been shut down"))
            if obj.job is not None:
                self.abort_job(obj.job, obj.message)
            raise WorkerError(f"worker {obj.worker} failed: {obj.message}", obj.worker, obj.traceback)

    def _receive_out_of_band(self, msg: MPI.Message, source: int) -> Any:
        """A report that lends large arrays: its pickle, then the arrays (see ``WorkerRuntime.report``)."""
        pickled, sizes = msg.recv()
        # numpy memory, not a plain buffer: the OS may back it with huge pages (fewer page faults).
        arrays = [np.empty(n, dtype=np.uint8) for n in sizes]
        requests = [self.ctrl.Irecv([a, MPI.BYTE], source=source, tag=P.TAG_REPORT_ARRAYS) for a in arrays]
        if not MPI.Request.Testall(requests):
            # The arrays are on their way: MPI moves a large message only while the receiver calls
            # into it, so test without sleeping (for up to OUT_OF_BAND_SPIN s; a sender that died
            # meanwhile is noticed once the wait sleeps).
            self.wait(lambda: MPI.Request.Testall(requests), f"the arrays of a report from worker {source - 1}",
                      spin=OUT_OF_BAND_SPIN)
        return P.join_out_of_band(pickled, arrays)

    def rings_reliable(self) -> bool:
        """Whether the workers' reports ring the driver's doorbell: nearly every one has so far.

        Rings may not cross hosts (a firewall); then the driver keeps
        waking in short steps to look for reports.
        """
        n = self._reports_in
        return self.doorbell.port != 0 and n >= RELIABLE_AFTER and self.doorbell.rings >= 0.9 * n

    def _watch(self) -> None:
        """While waiting on data (BSP partials): notice dead workers and error reports."""
        self._check_alive()
        while (obj := self._next_report()) is not None:
            self._backlog.append(obj)

    def _collect(self, accept: Callable[[Any], bool], count: int, what: str,
                 also: Callable[[], Any] | None = None, **wait: Any) -> list[Any]:
        """Receive reports until ``count`` accepted ones arrived; keep others for later.

        ``also`` runs at every look (a stream job drains published versions there).
        """
        got: list[Any] = [m for m in self._backlog if accept(m)]
        self._backlog = [m for m in self._backlog if not accept(m)]

        def test() -> bool:
            if also is not None:
                also()
            while len(got) < count and (obj := self._next_report()) is not None:
                (got if accept(obj) else self._backlog).append(obj)
            return len(got) >= count

        def silent() -> list[int]:
            return sorted(set(range(self.n_workers)) - {getattr(m, "worker", -1) for m in got})

        # A worker's own failure report (a peer of it hung) is raised as it is, from test().
        self.wait(test, what, silent=silent, **wait)
        return got

    def collect(self, accept: Callable[[Any], bool], count: int, what: str, **kw: Any) -> list[Any]:
        """Receive ``count`` reports that ``accept`` recognises (stale ones are dropped)."""
        self._require_open()
        return self._collect(accept, count, what, **kw)

    def new_job(self) -> int:
        self._job_seq += 1
        return self._job_seq

    def abort_job(self, job: int, reason: str) -> None:
        """Best effort: tell workers to drop ``job`` (no-op on a closed cluster)."""
        if self._closed or job in self._aborted:
            return
        self._aborted.add(job)
        try:
            self.broadcast(P.Abort(job, reason))
        except Exception:
            pass
        self._backlog = [m for m in self._backlog if getattr(m, "job", None) != job]

    def end_job(self, job: int) -> None:
        """Tell the workers ``job`` is over and forget its unclaimed reports."""
        self.broadcast(P.EndJob(job))
        self._backlog = [m for m in self._backlog if getattr(m, "job", None) != job]

    # -- data -------------------------------------------------------------------------
    def load(self, dataset: Any, allow_empty: bool = False) -> str:
        """Make sure every worker holds its partition of ``dataset``; return its id.

        ``allow_empty``: a dataset with fewer rows than workers leaves some
        workers an empty partition (online programs accept that).
        """
        from .data import row_bounds

        self._require_open()
        key = dataset.dataset_id
        if key in self._loaded:
            self._loaded.move_to_end(key)
            return key
        bounds = row_bounds(dataset.n_rows, self.n_workers, allow_empty)
        while len(self._loaded) >= CACHE_DATASETS:
            old, _ = self._loaded.popitem(last=False)
            self.broadcast(P.DropData(old))
        for w in range(self.n_workers):
            spec, buffers = dataset.slices(int(bounds[w]), int(bounds[w + 1]))
            self.broadcast(P.LoadData(key, spec), workers=[w])
            if buffers:
                self.send_buffers(w, buffers)
        self._collect(lambda m: isinstance(m, P.Loaded) and m.dataset_id == key,
                      self.n_workers, f"workers to load {key}")
        self._loaded[key] = dataset.n_rows
        return key

    # -- jobs ---------------------------------------------------------------------------
    def one_job_at_a_time(self) -> threading.RLock:
        """The lock a job holds from loading its data to its end: other threads' jobs wait their turn."""
        return self._turn

    def run(self, program: Any, model: dict, dataset: Any, *, allow_empty: bool = False, **kwargs: Any):
        """Run ``program`` on ``dataset`` from ``model``; see :func:`drizzle_ml.scheduler.run_job`.

        Thread-safe: jobs of several threads run one after the other.
        """
        with self._turn:
            return self._run(program, model, dataset, allow_empty, **kwargs)

    def _run(self, program: Any, model: dict, dataset: Any, allow_empty: bool, **kwargs: Any):
        from .data import ContentChanged
        from .scheduler import run_job

        speculative = getattr(dataset, "speculative", False)
        if speculative and dataset.dataset_id not in self._loaded:
            dataset.confirm()  # data goes to the workers under its content's id only
            speculative = False
        dataset_id = self.load(dataset, allow_empty)
        if not speculative:
            return run_job(self, program, model, dataset_id, **kwargs)
        try:
            return run_job(self, program, model, dataset_id, confirm=dataset.confirm, **kwargs)
        except ContentChanged:
            # X changed in place since its last fingerprint: the job, on the old
            # partitions, was aborted before any of its results counted.
            return run_job(self, program, model, self.load(dataset, allow_empty), **kwargs)

    # -- shutdown -----------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Shut the workers down and wait for them (bounded); idempotent.

        A job running in another thread is waited for first.
        """
        with self._turn:
            self._close()

    def _close(self) -> None:
        if self._closed:
            return
        try:
            self.broadcast(P.Shutdown())
            self._collect(lambda m: isinstance(m, P.Bye), self.n_workers, "worker shutdown",
                          timeout=min(self.timeout, 30.0))
        except BaseException:
            self._teardown()
            return
        self._closed = True
        self.doorbell.close()
        if self.mode == "launched":
            self._job.close()

    def _teardown(self) -> None:
        """Forceful end after a failure: no waiting on workers that may be gone."""
        self._closed = True
        self.doorbell.close()
        if self._broken is None:
            self._broken = "torn down"
        if self.mode == "launched":
            self._job.kill()
        elif self.mode == "world":
            # Hung or half-dead ranks: only mpiexec can end them. Leave the
            # abort to interpreter exit, so the caller still sees the exception.
            atexit.register(_abort_world)

    def placement(self) -> dict[str, list[int]]:
        """Which ranks run on which host: ``{host: [ranks]}``, hosts in the order of their lowest rank.

        Rank 0 is the driver (this process); worker ``w`` is rank ``w + 1``.
        Hosts are as each process's ``socket.gethostname()`` reports them.
        """
        out: dict[str, list[int]] = {socket.gethostname(): [0]}
        for hello in self.workers:
            out.setdefault(hello.host, []).append(hello.worker + 1)
        return out

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Cluster(n_workers={self.n_workers}, mode={self.mode!r}, {state})"


def _replicate_updates(workers: list[P.Hello]) -> bool:
    """Whether every worker may apply ``update`` itself (see :mod:`drizzle_ml.executor`).

    Yes when all workers report one platform (the same update on the same
    total then gives the same bits), unless ``DRIZZLE_UPDATE=root``.
    """
    choice = os.environ.get("DRIZZLE_UPDATE", "auto")
    if choice not in ("auto", "replicated", "root"):
        raise ValueError(f"DRIZZLE_UPDATE must be auto, replicated or root, got {choice!r}")
    if choice != "auto":
        return choice == "replicated"
    return len({h.platform for h in workers}) <= 1


def _reduction_choice() -> str:
    """``DRIZZLE_REDUCTION``: ``auto`` (MPI collectives, see :mod:`drizzle_ml.collectives`) or ``tree``."""
    choice = os.environ.get("DRIZZLE_REDUCTION", "auto")
    if choice not in ("auto", "tree"):
        raise ValueError(f"DRIZZLE_REDUCTION must be auto or tree, got {choice!r}")
    return choice


def _abort_world() -> None:
    sys.stderr.write("drizzle-ml: aborting the MPI job after a worker failure\n")
    sys.stderr.flush()
    MPI.COMM_WORLD.Abort(1)


_default: Cluster | None = None
_default_lock = threading.Lock()  # threads asking for the default cluster at once get one cluster


def get_cluster(n_workers: int | None = None) -> Cluster:
    """The shared default cluster, created on first use and reused across fits.

    In world mode this is the ``mpiexec`` world. In launched mode a cluster
    of another size replaces the previous default one.
    """
    global _default
    if launched_by_mpiexec():
        if _world_cluster is not None and not _world_cluster.closed:
            if n_workers is not None and n_workers != _world_cluster.n_workers:
                raise ValueError(
                    f"n_workers={n_workers} but mpiexec started {_world_cluster.n_workers} workers"
                )
            return _world_cluster
        if _world_cluster is not None:
            raise ClusterClosedError("the mpiexec world's cluster is closed")
        return Cluster(n_workers)
    with _default_lock:
        if _default is not None and not _default.closed:
            if n_workers is None or n_workers == _default.n_workers:
                return _default
            _default.close()  # after the job another thread may be running on it
            _default._replaced_by = n_workers
        _default = Cluster(n_workers)
        return _default


@atexit.register
def _close_all() -> None:
    for cluster in list(_open_clusters):
        try:
            # A job still running in a (daemon) thread gets a moment to end; then the workers go anyway.
            turn = cluster.one_job_at_a_time()
            if turn.acquire(timeout=min(cluster.timeout, 30.0)):
                try:
                    cluster.close()
                finally:
                    turn.release()
            else:
                cluster._teardown()
        except Exception:
            pass
    # A world cluster torn down just now (a rank hung, so close() timed out) registered
    # _abort_world while atexit runs: such handlers are never called, and MPI_Finalize would
    # then wait for the hung rank for ever. (Torn down earlier, _abort_world ran before this.)
    if _world_cluster is not None and _world_cluster._broken is not None:
        _abort_world()
    # The driver of an mpiexec world must release its workers even if it never
    # made a Cluster (an early error, a script that did not need one); with
    # DRIZZLE_NO_SERVE no rank serves, so there is nobody to release.
    if (_world_cluster is None and launched_by_mpiexec() and not os.environ.get("DRIZZLE_NO_SERVE")
            and MPI.Is_initialized() and not MPI.Is_finalized()):
        if MPI.COMM_WORLD.Get_rank() == 0:
            try:
                Cluster(timeout=30.0, start_timeout=30.0).close()
            except Exception:
                pass
