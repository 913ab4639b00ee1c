"""drizzle-ml: iterative and online machine learning on MPI, with Drizzle-style group scheduling.

Under ``mpiexec -n W+1``, rank 0 runs your program as the driver and the other
ranks serve as workers from the moment they import this package. From a plain
Python process, :class:`Cluster` (or any estimator) launches its workers.
"""

from __future__ import annotations

import os as _os

_os.environ.setdefault("UCX_LOG_LEVEL", "error")

from .algorithms.registry import BY_CLASS as _ESTIMATORS  # noqa: E402  (names only: no estimator is imported)
from .cluster import Cluster, get_cluster  # noqa: E402
from .data import ArrayDataset, FileDataset, HDF5Dataset  # noqa: E402
from .errors import (  # noqa: E402
    CheckpointError,
    CheckpointInUseError,
    CheckpointMismatchError,
    CheckpointWarning,
    ClusterClosedError,
    DrizzleError,
    LaunchError,
    StragglerWarning,
    VersionMismatchError,
    WorkerError,
    WorkerFailedError,
    WorkerRecoveredWarning,
    WorkerTimeoutError,
)
from .hashing import FeatureHasher  # noqa: E402  (scikit-learn's murmurhash is imported at first use)
from .metrics import GroupMetrics, JobResult  # noqa: E402
from .parquet import ParquetDataset  # noqa: E402  (pyarrow is imported only when a file is read)
from .program import Partition, Program  # noqa: E402
from .store import ModelStore, ModelVersion  # noqa: E402
from .streams import (  # noqa: E402
    DirectorySource,
    FileSource,
    HDF5Source,
    IterableSource,
    ParquetSource,
    StreamError,
    TCPSource,
    parse_source,
)

__version__ = "0.1.0"

__all__ = [  # noqa: PLE0604  (*_ESTIMATORS: the registry's class names, strings)
    "ArrayDataset",
    "CheckpointError",
    "CheckpointInUseError",
    "CheckpointMismatchError",
    "CheckpointWarning",
    "StragglerWarning",
    "Cluster",
    "ClusterClosedError",
    "DirectorySource",
    "DrizzleError",
    "FeatureHasher",
    "FileDataset",
    "FileSource",
    "HDF5Source",
    "IterableSource",
    "GroupMetrics",
    "HDF5Dataset",
    "JobResult",
    "LaunchError",
    "ParquetDataset",
    "ParquetSource",
    "ModelStore",
    "ModelVersion",
    "Partition",
    "Program",
    "StreamError",
    "TCPSource",
    "VersionMismatchError",
    "WorkerError",
    "WorkerFailedError",
    "WorkerRecoveredWarning",
    "WorkerTimeoutError",
    "get_cluster",
    "parse_source",
    "stream_fit",
    *_ESTIMATORS,
]


def __getattr__(name: str):
    # Estimators live in drizzle_ml.algorithms; import them lazily so the
    # engine itself never imports an algorithm.
    if name in _ESTIMATORS:
        return _ESTIMATORS[name].load()
    if name == "stream_fit":
        from .algorithms.stream import stream_fit

        return stream_fit
    raise AttributeError(f"module 'drizzle_ml' has no attribute {name!r}")


# Last, so that program modules imported by a worker see the whole package.
from ._bootstrap import serve_if_worker_rank as _serve_if_worker_rank  # noqa: E402

_serve_if_worker_rank()
