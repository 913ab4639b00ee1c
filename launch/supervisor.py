"""Run an ``mpiexec`` job as a child, forward signals to it, and never leave it behind."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from drizzle_ml.hydra import OutputFilter
from drizzle_ml.worker_job import die_with_parent


def run_supervised(cmd: Sequence[str], env: dict[str, str] | None = None, grace: float = 10.0,
                   on_stderr_line: Callable[[str], None] | None = None, graceful: int | None = None,
                   graceful_wait: float = 120.0, notices: deque[str] | None = None) -> int:
    """Run ``cmd`` in its own process group; return its exit code.

    SIGINT/SIGTERM to this process are forwarded to the whole group (mpiexec
    and every rank); after ``grace`` seconds the group is killed. With
    ``graceful``, the first such signal is sent as ``graceful`` to mpiexec
    alone (which passes it to the ranks) and the job may finish in its own
    time (at most ``graceful_wait`` seconds, then it is stopped as if signalled
    again); a second one is forwarded as usual. The job's output passes
    through this process; MPICH Hydra's notices (a dead rank's banner, exit
    codes) are held back in ``notices`` for the caller to show after a
    failure. ``on_stderr_line`` sees each line of the job's stderr.
    """
    notices = deque(maxlen=100) if notices is None else notices
    proc = subprocess.Popen(list(cmd), env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=die_with_parent)
    pumps = [threading.Thread(target=OutputFilter("stdout", notices).pump, args=(proc.stdout,), daemon=True),
             threading.Thread(target=OutputFilter("stderr", notices, on_line=on_stderr_line).pump,
                              args=(proc.stderr,), daemon=True)]
    for pump in pumps:
        pump.start()
    received: list[int] = []
    asked: list[int] = []  # a graceful stop was asked for
    when: dict[str, float] = {}  # when it was asked, and when signals were forwarded

    def forward(signum, _frame):
        if graceful is not None and not asked:
            asked.append(signum)
            when["asked"] = time.monotonic()
            try:
                os.kill(proc.pid, graceful)
            except ProcessLookupError:
                pass
            return
        received.append(signum)
        when.setdefault("forwarded", time.monotonic())
        try:
            os.killpg(proc.pid, signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)
        except ProcessLookupError:
            pass

    # A hang-up (the terminal closed, ssh dropped) stops the job as SIGTERM does.
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        # Short waits, so that the deadlines below are looked at (a blocking
        # wait would just resume after each signal handler).
        while True:
            try:
                code = proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                now = time.monotonic()
                if "forwarded" in when and now - when["forwarded"] > grace:
                    os.killpg(proc.pid, signal.SIGKILL)
                elif "asked" in when and not received and now - when["asked"] > graceful_wait:
                    forward(signal.SIGTERM, None)  # the graceful stop is overdue: stop it
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        for pump, pipe in zip(pumps, (proc.stdout, proc.stderr)):
            pump.join(timeout=5.0)
            if not pump.is_alive():
                pipe.close()
    if received:
        return 128 + received[0]
    return code

