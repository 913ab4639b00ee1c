"""Messages between the driver and the workers, and the MPI tags they use.

Control messages and reports are small pickled dataclasses (one per worker per
group). Partials and models travel as raw bytes under per-job tags, so that
messages left over from an aborted job can never match a later job's receives.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TAG_CTRL = 1  # driver -> worker, pickled control messages
TAG_REPORT = 2  # worker -> driver, pickled reports
TAG_DATA = 3  # driver -> worker, raw partition buffers after a LoadArrays
TAG_PUBLISH = 4  # tree root -> driver, each new model version of a publishing job (streams)
TAG_REPORT_LARGE = 5  # worker -> driver, a report lending large arrays: its pickle without them
TAG_REPORT_ARRAYS = 6  # worker -> driver, right after it: those arrays' raw bytes, in order

# Per-job data tags: kind (3 bits) | job (12 bits) | iteration (14 bits) < 2**29.
UP, DOWN, BSP_TASK, BSP_PARTIAL = 1, 2, 3, 4
_ITER_BITS, _JOB_BITS = 14, 12
ITER_MOD = 1 << _ITER_BITS


def data_tag(kind: int, job: int, iteration: int) -> int:
    return (kind << (_ITER_BITS + _JOB_BITS)) | ((job % (1 << _JOB_BITS)) << _ITER_BITS) | (
        iteration % ITER_MOD
    )


#: Arrays at least this large leave a large report's pickle and travel raw (see :func:`split_out_of_band`).
OUT_OF_BAND_MIN_BYTES = 1 << 16


def split_out_of_band(message: Any) -> tuple[bytes, list[memoryview]]:
    """``message`` pickled (protocol 5) without its large arrays, and those arrays' memory (no copy).

    The receiver allocates each array itself, as numpy memory (which the OS
    may back with huge pages: receiving hundreds of MiB into it costs a
    third of receiving into a plain buffer), then :func:`join_out_of_band`.
    """
    arrays: list[memoryview] = []

    def keep_in_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < OUT_OF_BAND_MIN_BYTES:
            return True
        arrays.append(raw)
        return False

    return pickle.dumps(message, protocol=5, buffer_callback=keep_in_band), arrays


def join_out_of_band(pickled: bytes, arrays: list[np.ndarray]) -> Any:
    """The message :func:`split_out_of_band` split, from its pickle and its arrays' received bytes."""
    return pickle.loads(pickled, buffers=arrays)


# Header in front of every model message going down the tree (float64 slots).
HEADER_SLOTS = 3  # version, iteration, flags
FLAG_STOP = 1.0


@dataclass
class LoadData:
    dataset_id: str
    spec: dict[str, Any]  # {"kind": "arrays", "fields": [...]} or {"kind": "hdf5" or "parquet", ...}


@dataclass
class DropData:
    dataset_id: str


@dataclass(frozen=True)
class Zeros:
    """An all-zero array in a message: its shape and dtype only (see :func:`compact`)."""

    shape: tuple[int, ...]
    dtype: str


#: Arrays at least this large that hold only zeros travel as :class:`Zeros`.
ZEROS_MIN_BYTES = 1 << 16


def compact(model: dict) -> dict:
    """``model`` with its large all-zero arrays (a fresh optimizer's memory) as :class:`Zeros`.

    A wide L-BFGS model starts with hundreds of megabytes of zeros; sending
    them, then unpickling them next to the message, doubled a worker's memory
    at the start of a job.
    """
    out = {}
    for key, value in model.items():
        array = np.asarray(value)
        zero = array.nbytes >= ZEROS_MIN_BYTES and array.dtype.kind in "biufc" and not array.any()
        out[key] = Zeros(array.shape, array.dtype.str) if zero else value
    return out


def expand(model: dict) -> dict:
    """The arrays :func:`compact` left out, allocated again (zeroed by the kernel, page by page)."""
    return {k: (np.zeros(v.shape, dtype=v.dtype) if isinstance(v, Zeros) else v) for k, v in model.items()}


@dataclass
class StartJob:
    job: int
    program: bytes  # pickled: unpickled by the worker inside the job, so failures are reported
    dataset_id: str
    model: dict
    version: int
    fanout: int
    scheduling: str  # "group" or "bsp"
    timeout: float = 60.0  # the driver's Cluster(timeout): every wait of the job uses it
    stream: Any = None  # a sources.StreamSpec: each iteration reads a micro-batch instead of a partition
    publish: bool = False  # the root sends every new version to the driver (streaming.Publisher)
    replicate: bool = True  # every worker applies update to the reduced total (else: the root, then Bcast)
    reduction: str = "auto"  # "auto" (see drizzle_ml.collectives) or "tree" (the point-to-point tree)
    shard: Any = None  # a sharding.Shard: this worker's part of a sharded model (model holds only its shards)


@dataclass
class RunGroup:
    job: int
    start: int  # first iteration of the group
    size: int  # iterations in the group
    version: int  # model version the group starts from


@dataclass
class EndJob:
    job: int


@dataclass
class Abort:
    job: int
    reason: str = ""


@dataclass
class Shutdown:
    pass


@dataclass
class Hello:
    worker: int
    pid: int
    host: str
    doorbell: int = 0  # UDP port of the worker's doorbell (drizzle_ml.doorbell); 0: none
    platform: str = ""  # what decides floating-point results (drizzle_ml.worker.platform_signature)


@dataclass
class Doorbells:
    """Where every rank's doorbell is, sent once after start-up: ``(host, port)``, port 0 for none."""

    driver: tuple[str, int]
    workers: list[tuple[str, int]]


@dataclass
class Loaded:
    dataset_id: str
    worker: int
    n_rows: int


@dataclass(slots=True)
class GroupTimings:
    """One worker's seconds in one group: where its time went, and its rows.

    compute : inside ``local``; reduce : combining partials (and waiting for
    them); broadcast : waiting for the new model; update : inside ``update``;
    execution : from the group's start to the report; startup : setting the
    job up (first group only); source : waiting for a stream's records;
    rows : the partition's rows (straggler rebalancing reads them).
    """

    compute: float = 0.0
    reduce: float = 0.0
    broadcast: float = 0.0
    update: float = 0.0
    execution: float = 0.0
    startup: float = 0.0
    source: float = 0.0
    rows: int = 0


@dataclass
class GroupReport:
    job: int
    start: int
    worker: int
    n_done: int
    version: int
    stopped: bool
    timings: GroupTimings
    model: dict | None = None  # root only
    metrics: dict[str, list] = field(default_factory=dict)  # root only
    offsets: dict[str, Any] | None = None  # stream jobs: this worker's partition offsets after the group
    digest: int | None = None  # replicated jobs: executor.model_digest of this worker's replica
    reduction: str = ""  # how this job combines partials (JobResult.reduction)
    shard: dict | None = None  # a sharded job: this worker's shard of the sharded keys


@dataclass
class ErrorReport:
    job: int | None
    worker: int
    message: str
    traceback: str = ""
    # The worker gave up waiting on a peer (a WorkerFailedError: a hung or dead worker), not a
    # program error: the driver must tear the cluster down as after its own timeout.
    failed: bool = False


@dataclass
class Bye:
    worker: int


# -- adaptivity (rebalancing a straggler's rows; see drizzle_ml.adaptivity) --------------
REBALANCE = 5  # data_tag kind of rows moved between workers


@dataclass
class Rebalance:
    """Between two groups: move rows, ``moves`` = [(src worker, dst worker, n rows)]."""

    job: int
    moves: list[tuple[int, int, int]]
