"""Make ranks 1..W of an ``mpiexec`` world serve as workers as soon as they import drizzle_ml.

This is what lets ``mpiexec -n W+1 python my_script.py`` run the user's
script on rank 0 only: the other ranks never get past ``import drizzle_ml``.
"""

from __future__ import annotations

import os
import sys


def serve_if_worker_rank() -> None:
    from .worker_job import launched_by_mpiexec

    if os.environ.get("DRIZZLE_NO_SERVE") or not launched_by_mpiexec():
        return
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_rank() == 0:
        return
    import signal

    from .worker import serve_world

    # SIGUSR1 asks the driver to stop a stream at a group boundary; mpiexec
    # passes it to every rank, and workers just carry on until told to stop.
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        serve_world()
    except KeyboardInterrupt:
        # Ctrl-C reaches every rank of the job; the driver reports it, workers just stop.
        os._exit(130)
    sys.stdout.flush()
    sys.exit(0)
