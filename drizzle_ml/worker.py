"""The worker role: serve control messages, keep partitions, run jobs' groups.

Workers are ranks 1..W of the driver's communicator. They come up either from
``mpiexec -n W+1`` (importing :mod:`drizzle_ml` on a rank other than 0 serves
here until the driver shuts the cluster down) or as a separate worker job that
a :class:`~drizzle_ml.Cluster` launches and that connects back to the driver
(``python -m drizzle_ml.worker --connect PORT``).
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import os
import platform
import signal
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from mpi4py import MPI

from . import protocol as P
from .data import PartitionCache, assemble_partition, read_hdf5_partition
from .doorbell import Address, Doorbell, bell_address
from .errors import WorkerTimeoutError
from .executor import JobExecutor, RecvRing, SendRing
from .layout import Layout
from .waiting import WaitPolicy, WaitTimeout, look_twice, poll, timeout_from_env


class JobAborted(Exception):
    """The driver aborted the job this worker is running."""


class _PeerTimeout(WorkerTimeoutError):
    """A worker waited in vain on other workers, not on the driver: one of them hung or died, and the
    driver tears the cluster down (its own wait would run out a moment later). A late driver leaves
    the workers sound: that stays an ordinary error report."""


def _limit_blas_threads(ranks_on_host: int) -> None:
    # One BLAS thread per rank unless the user said otherwise: W+1 ranks on a
    # few cores must not each start a full thread pool.
    if any(v in os.environ for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")):
        return
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(max(1, (os.cpu_count() or 1) // max(ranks_on_host, 1)))
    except Exception:  # threadpoolctl is optional at run time
        pass


class WorkerRuntime:
    def __init__(self, ctrl: MPI.Intracomm, peers: MPI.Intracomm, timeout: float):
        self.ctrl, self.peers = ctrl, peers
        self.index, self.n_workers = peers.Get_rank(), peers.Get_size()
        ranks_here = int(os.environ.get("MPI_LOCALNRANKS", self.n_workers + 1))
        # The driver sleeps through groups, so only the workers compete for cores.
        self.policy = WaitPolicy.for_ranks(ranks_here - 1, timeout)
        self.idle_policy = WaitPolicy(timeout=float("inf"), spin=0.0, max_sleep=2e-3, check_every=1.0)
        _limit_blas_threads(ranks_here)
        self.inbox: deque = deque()
        self.cache = PartitionCache()
        self.jobs: dict[int, Any] = {}
        self.finished: set[int] = set()
        self.current_job: int | None = None
        self.driver_pid: int | None = None
        self.pending_reports: list[tuple[Callable[[], bool], list[np.ndarray]]] = []
        self.doorbell = Doorbell()
        self.driver_bell: Address | None = None
        self.peer_bells: list[Address | None] = [None] * self.n_workers
        self._probe_ctrl = lambda: ctrl.improbe(source=0, tag=P.TAG_CTRL)

    # -- messaging --------------------------------------------------------------
    def report(self, message: Any, lend: Iterable[np.ndarray] = ()) -> None:
        """Send ``message`` to the driver.

        ``lend`` are arrays in it that go without a copy (a model's, as large
        as the worker's share of it): such a report's pickle leaves its large
        arrays out and goes under its own tag, the arrays follow as raw
        messages from the model's memory (see :func:`~drizzle_ml.protocol.split_out_of_band`),
        and the lent arrays are read-only until the driver has them, so an
        ``update`` that would reuse one in place copies it instead (see
        :class:`~drizzle_ml.program.Program`), and writeable again after. Other
        reports go as one pickled message, which costs the driver less to poll for.
        """
        self.release_reports()
        lent = [a for a in lend if a.flags.writeable]
        if lent:
            for array in lent:
                array.flags.writeable = False
            pickled, arrays = P.split_out_of_band(message)
            requests = [self.ctrl.isend((pickled, [a.nbytes for a in arrays]), dest=0, tag=P.TAG_REPORT_LARGE)]
            requests += [self.ctrl.Isend([a, MPI.BYTE], dest=0, tag=P.TAG_REPORT_ARRAYS) for a in arrays]
            self.pending_reports.append((lambda: MPI.Request.Testall(requests), lent))
        else:  # small: one pickled message, the cheaper path (the driver polls for these)
            self.pending_reports.append((self.ctrl.isend(message, dest=0, tag=P.TAG_REPORT).Test, lent))
        self.ring_driver()

    def release_reports(self) -> None:
        """Let go of the reports the driver has received; their lent arrays are writeable again."""
        pending = []
        for done, lent in self.pending_reports:
            if done():
                for array in lent:
                    array.flags.writeable = True
            else:
                pending.append((done, lent))
        self.pending_reports = pending

    def ring_driver(self) -> None:
        """Wake the driver, which may be sleeping on a message just sent to it."""
        self.doorbell.ring(self.driver_bell)

    def ring_peers(self, workers: list[int]) -> None:
        """Wake peers that may be sleeping on a message just sent to them."""
        for w in workers:
            self.doorbell.ring(self.peer_bells[w])

    def poll_ctrl(self) -> None:
        while True:
            msg = look_twice(self._probe_ctrl)
            if msg is None:
                return
            obj = msg.recv()
            if isinstance(obj, P.Abort):
                self.finished.add(obj.job)
                if obj.job == self.current_job:
                    raise JobAborted(obj.reason)
            else:
                self.inbox.append(obj)

    def wait(self, test: Callable[[], Any], what: str, extra: float = 0.0, spin: float | None = None,
             max_sleep: float | None = None, peers: bool = False) -> Any:
        """Poll ``test`` until true, bounded by the job's timeout. ``peers``: it waits on other workers."""
        try:
            return poll(test, self.policy, on_idle=self.poll_ctrl, timeout=self.policy.timeout + extra,
                        spin=spin, max_sleep=max_sleep, sleep=self.doorbell.sleep)
        except WaitTimeout:
            error = _PeerTimeout if peers else WorkerTimeoutError
            raise error(
                f"worker {self.index} waited {self.policy.timeout + extra:.3g} s for {what}", self.index
            ) from None

    def _driver_alive(self) -> None:
        if self.driver_pid is not None:
            try:
                os.kill(self.driver_pid, 0)
            except ProcessLookupError:
                raise SystemExit(f"drizzle-ml worker {self.index}: the driver (pid {self.driver_pid}) "
                                 "is gone") from None

    def next_message(self) -> Any:
        def ready():
            if not self.inbox:
                self.poll_ctrl()
            if self.pending_reports:  # idle: let go of what the driver has received
                self.release_reports()
            return self.inbox.popleft() if self.inbox else None

        return poll(ready, self.idle_policy, on_idle=self._driver_alive, sleep=self.doorbell.sleep)

    # -- serving ------------------------------------------------------------------
    def serve(self) -> None:
        self.report(P.Hello(self.index, os.getpid(), socket.gethostname(), self.doorbell.port,
                            platform_signature()))
        while True:
            msg = self.next_message()
            if isinstance(msg, P.Shutdown):
                for job in list(self.jobs.values()):
                    job.close()
                self.report(P.Bye(self.index))
                poll(lambda: self.release_reports() or not self.pending_reports, self.policy)
                self.doorbell.close()
                return
            try:
                self.handle(msg)
            except JobAborted:
                self._drop_job(self.current_job)
            except Exception as exc:  # reported to the driver, which raises it
                job = getattr(msg, "job", None)
                self._drop_job(job)
                if isinstance(exc, _PeerTimeout):  # a peer hung or died: no program error to show
                    self.report(P.ErrorReport(job, self.index, str(exc), failed=True))
                else:
                    self.report(
                        P.ErrorReport(job, self.index, f"{type(exc).__name__}: {exc}", traceback.format_exc())
                    )
            finally:
                self.current_job = None

    def _drop_job(self, job: int | None) -> None:
        if job is None:
            return
        self.finished.add(job)
        executor = self.jobs.pop(job, None)
        if executor is not None:
            executor.close()

    def handle(self, msg: Any) -> None:
        if isinstance(msg, P.LoadData):
            self.load(msg)
        elif isinstance(msg, P.Doorbells):
            self.driver_bell = bell_address(*msg.driver)
            self.peer_bells = [bell_address(*where) for where in msg.workers]
        elif isinstance(msg, P.DropData):
            self.cache.drop(msg.dataset_id)
        elif isinstance(msg, P.StartJob):
            self.current_job = msg.job
            self.policy = dataclasses.replace(self.policy, timeout=msg.timeout)
            t0 = time.perf_counter()
            # First, before anything that can fail: every worker must take part.
            comm = self.job_comm() if msg.scheduling == "group" else None
            try:
                # May import the program's module (and scikit-learn): start-up, not coordination.
                msg.program = MPI.pickle.loads(msg.program)
            except Exception as exc:
                raise RuntimeError(
                    f"cannot unpickle the program ({type(exc).__name__}: {exc}); define program "
                    "classes in a module the workers can import, not in __main__"
                ) from exc
            msg.model = P.expand(msg.model)
            if msg.shard is not None:
                msg.shard = dataclasses.replace(msg.shard, gathered=P.expand(msg.shard.gathered))
            unpickled_in = time.perf_counter() - t0
            partition = None if msg.stream is not None else self.cache.get(msg.dataset_id)
            if msg.scheduling == "bsp":
                BspWorker(self, msg, partition).run()
                self.finished.add(msg.job)
            else:
                t0 = time.perf_counter()
                executor = JobExecutor(self, msg, partition, comm)
                executor.startup = unpickled_in + time.perf_counter() - t0
                self.jobs[msg.job] = executor
        elif isinstance(msg, P.RunGroup):
            if msg.job in self.finished:
                return  # a group sent ahead for a job that already stopped
            executor = self.jobs.get(msg.job)
            if executor is None:
                raise KeyError(f"worker {self.index} has no job {msg.job}")
            self.current_job = msg.job
            report = executor.run_group(msg)
            if report.stopped:
                self._drop_job(msg.job)
            self.report(report, lend=executor.lendable(report))
        elif isinstance(msg, P.EndJob):
            self._drop_job(msg.job)
        elif isinstance(msg, P.Rebalance):  # move a straggler's rows (drizzle_ml.adaptivity)
            executor = self.jobs.get(msg.job)
            if executor is not None and msg.job not in self.finished:
                executor.rebalance(self, msg.moves)
            # else the job stopped (converged) in the group sent ahead: every worker skips alike
        else:
            raise TypeError(f"unknown control message {type(msg).__name__}")

    def job_comm(self) -> MPI.Intracomm:
        """A fresh communicator of the workers for one job's collectives.

        A job aborted mid-iteration can leave a collective started on some
        workers only; on a shared communicator the next job's collectives
        would match it. A communicator per job cannot be confused that way.
        Created with a nonblocking duplicate, so the wait is bounded.
        """
        comm, request = self.peers.Idup()
        if not request.Test():
            try:
                self.wait(request.Test, "the other workers to start the job", peers=True)
            except BaseException:
                from .executor import _ABANDONED

                _ABANDONED.append((comm, request))
                raise
        return comm

    def load(self, msg: P.LoadData) -> None:
        spec = msg.spec
        if spec["kind"] == "hdf5":
            partition = read_hdf5_partition(spec)
        elif spec["kind"] == "parquet":
            from .parquet import read_parquet_partition  # pyarrow only where Parquet is read

            partition = read_parquet_partition(spec)
        else:
            buffers, requests = [], []
            for _, _, _, parts in spec["fields"]:
                for shape, dtype in parts:
                    buf = np.empty(shape, dtype=np.dtype(dtype))
                    buffers.append(buf)
                    requests.append(self.ctrl.Irecv(buf, source=0, tag=P.TAG_DATA))
            self.wait(lambda: MPI.Request.Testall(requests), f"partition data of {msg.dataset_id}")
            partition = assemble_partition(spec, buffers)
        partition.worker = self.index
        self.cache.put(msg.dataset_id, partition)
        self.report(P.Loaded(msg.dataset_id, self.index, partition.n_rows))


def platform_signature() -> str:
    """What decides the floating-point results of numpy code on this process.

    Replicas update independently only when every worker's signature is the
    same: CPU architecture and SIMD features, numpy's version, the BLAS
    library, its kernel and its thread count.
    """
    parts = [platform.machine(), f"numpy {np.__version__}"]
    try:
        from numpy._core._multiarray_umath import __cpu_features__

        parts.append(",".join(sorted(name for name, on in __cpu_features__.items() if on)))
    except ImportError:  # another numpy layout: fall back to the kernel's view
        parts.append(_cpu_flags())
    try:
        from threadpoolctl import threadpool_info

        parts += [f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} x{i.get('num_threads')}"
                  for i in threadpool_info() if i.get("user_api") == "blas"]
    except Exception:  # threadpoolctl is optional at run time
        pass
    return "|".join(parts)


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


class BspWorker:
    """Baseline (Spark-style) execution: every iteration is a task from the driver.

    The driver sends the model with each task, gathers the partials itself,
    updates, and sends the next task. Buffers are preallocated and reused so the
    comparison measures the pattern, not pickling.
    """

    def __init__(self, rt: WorkerRuntime, spec: P.StartJob, partition):
        self.rt, self.spec, self.partition = rt, spec, partition
        shared = spec.program.shared
        keys = tuple(spec.model) if shared is None else tuple(shared)
        self.layout = Layout({k: spec.model[k] for k in keys})
        self.header_bytes = P.HEADER_SLOTS * 8
        self.version = spec.version

    def run(self) -> None:
        rt, job, program = self.rt, self.spec.job, self.spec.program
        nbytes = self.header_bytes + self.layout.nbytes
        estimate = 0.0

        def wait(test, what):
            return rt.wait(test, what, extra=4 * estimate)

        tasks = RecvRing(rt.ctrl, 0, P.BSP_TASK, job, nbytes, 2, wait, "the driver's task")
        sends: SendRing | None = None
        up_layout = None
        compute = 0.0
        t_start = time.perf_counter()
        it = 0
        while True:
            tasks.post_until(it, it + 2)
            buf = tasks.receive(it)
            # The model views stay valid: this slot's next task is for it + 2,
            # which the driver sends only after this iteration's partial.
            tasks.release(it)
            version, _, flags = buf[: self.header_bytes].view(np.float64)
            if flags == P.FLAG_STOP:
                break
            self.version = int(version)
            model = self.layout.unpack(buf, self.header_bytes)
            t0 = time.perf_counter()
            partial = program.local(model, self.partition)
            compute += time.perf_counter() - t0
            tag = P.data_tag(P.BSP_PARTIAL, job, it)
            if up_layout is None:
                # The first partial goes pickled so the driver learns its layout.
                up_layout = Layout(partial)
                first = rt.ctrl.isend((up_layout, partial), dest=0, tag=tag)
                rt.ring_driver()
                wait(first.Test, "delivery of the first partial")
                sends = SendRing(up_layout.nbytes, 2, wait, "a partial")
            else:
                sbuf = sends.slot(it)
                up_layout.pack(partial, sbuf)
                sends.track(it, [rt.ctrl.Isend([sbuf, MPI.BYTE], dest=0, tag=tag)])
                rt.ring_driver()
            estimate = max(estimate, time.perf_counter() - t0)
            it += 1
        tasks.cancel()
        timings = P.GroupTimings(compute=compute, execution=time.perf_counter() - t_start)
        rt.report(P.GroupReport(job, 0, rt.index, it, self.version, True, timings))


def serve_world(comm: MPI.Intracomm | None = None) -> None:
    """Serve as a worker of an ``mpiexec``-launched world whose rank 0 is the driver."""
    world = comm or MPI.COMM_WORLD
    group = world.Get_group().Excl([0])
    peers = world.Create_group(group)  # collective over the workers only
    group.Free()
    runtime = WorkerRuntime(world, peers, timeout_from_env())
    runtime.serve()


def main(argv: list[str] | None = None) -> None:
    """Entry point of a worker job launched by :class:`drizzle_ml.Cluster`."""
    parser = argparse.ArgumentParser(prog="python -m drizzle_ml.worker")
    parser.add_argument("--connect", required=True, help="MPI port name published by the driver")
    parser.add_argument("--driver-pid", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=timeout_from_env())
    args = parser.parse_args(argv)
    faulthandler.register(signal.SIGUSR2)  # `kill -USR2 <pid>` prints where a worker is
    peers = MPI.COMM_WORLD.Dup()
    inter = MPI.COMM_WORLD.Connect(args.connect, root=0)
    ctrl = inter.Merge(high=True)
    runtime = WorkerRuntime(ctrl, peers, args.timeout)
    if args.driver_pid and socket.gethostname() == os.environ.get("DRIZZLE_DRIVER_HOST"):
        runtime.driver_pid = args.driver_pid
    runtime.serve()
    ctrl.Free()
    inter.Disconnect()


if __name__ == "__main__":
    main(sys.argv[1:])
