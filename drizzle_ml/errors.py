"""Exceptions raised by the engine. All derive from :class:`DrizzleError`."""

from __future__ import annotations


class DrizzleError(RuntimeError):
    """Base class of drizzle-ml's engine errors."""


class WorkerFailedError(DrizzleError):
    """A worker died, hung or could not be reached; the cluster was torn down.

    ``worker`` is the 0-based worker index (MPI rank ``worker + 1`` in the
    driver's communicator), or ``None`` when the failing worker is unknown.
    """

    def __init__(self, message: str, worker: int | None = None):
        super().__init__(message)
        self.worker = worker


class WorkerTimeoutError(WorkerFailedError):
    """A worker did not answer within the cluster's timeout."""


class WorkerError(DrizzleError):
    """User or algorithm code raised on a worker; the remote traceback is attached."""

    def __init__(self, message: str, worker: int, remote_traceback: str = ""):
        super().__init__(message)
        self.worker = worker
        self.remote_traceback = remote_traceback


class VersionMismatchError(DrizzleError):
    """A group named a model version that a worker's replica does not hold."""


class ReplicaMismatchError(DrizzleError):
    """Workers that apply the same updates to the same totals hold different models.

    ``worker`` is the first worker whose replica differs from worker 0's.
    Replicas update independently only when every worker reports the same
    platform; ``DRIZZLE_UPDATE=root`` makes the root update and broadcast.
    """

    def __init__(self, message: str, worker: int):
        super().__init__(message)
        self.worker = worker


class LaunchError(DrizzleError):
    """The processes were not started as one MPI world (``srun`` without a PMI that MPICH speaks)."""


class ClusterClosedError(DrizzleError):
    """The cluster was used after it was closed or torn down."""


class CheckpointError(DrizzleError):
    """A checkpoint could not be written, or a checkpoint file is invalid."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint belongs to a different job (another algorithm or other parameters)."""


class CheckpointInUseError(CheckpointError):
    """Another running job (or another fit in this process) holds the job's checkpoint directory."""


class WorkerRecoveredWarning(RuntimeWarning):
    """A worker died during a job; the workers were restarted and the job resumed from its last commit."""


class CheckpointWarning(UserWarning):
    """An invalid checkpoint file was skipped (truncated, corrupted, foreign)."""


class StragglerWarning(UserWarning):
    """A worker was the slowest by a configured factor in several consecutive groups.

    ``worker`` is its 0-based index and ``host`` its host name.
    """

    def __init__(self, message: str, worker: int | None = None, host: str | None = None):
        super().__init__(message)
        self.worker, self.host = worker, host
