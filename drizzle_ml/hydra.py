"""MPICH Hydra's own messages in a job's output, told apart from what the ranks print.

``mpiexec`` (Hydra) writes notices into the job's output streams: the exit
codes of every rank (``-print-all-exitcodes``), and a banner of ``=`` lines
naming a process that died. On a clean run they are noise that breaks piped
or parsed output; after a failure they are the best diagnosis there is. An
:class:`OutputFilter` passes the ranks' lines through and holds Hydra's back,
for the caller to show on stderr only when the job failed.
"""

from __future__ import annotations

import re
import sys
from collections import deque
from collections.abc import Callable, Iterator
from typing import IO

_HYDRA_BANNER = ("=" * 20, "=   BAD TERMINATION", "=   PID ", "=   EXIT CODE", "=   CLEANING UP",
                 "=   YOU CAN IGNORE", "YOUR APPLICATION TERMINATED",
                 "This typically refers to a problem with your application",
                 "Please see the FAQ page for debugging suggestions", "[mpiexec@", "[proxy:")


# The exit codes of a job over several hosts go on, one host a line: "[node2] 0,0".
_EXIT_CODES_GO_ON = re.compile(r"^\[[\w.-]+\] -?\d+(,-?\d+)*$")


def is_hydra_notice(line: str) -> bool:
    """Whether a line of a job's output is MPICH Hydra's, not a rank's.

    Hydra prefixes its messages with ``[mpiexec@host]`` or ``[proxy:...]``
    and frames a dead process's report in a banner of ``=`` lines.
    """
    return line.strip().startswith(_HYDRA_BANNER)


class OutputFilter:
    """Copy one output stream of a job to ``sys.<stream_name>``, holding Hydra's notices back.

    ``notices`` (shared by the filters of one job's streams) keeps the newest
    notices; ``tail``, when given, every line (for diagnosing a failure);
    ``on_line`` sees each line that passes. The blank lines Hydra frames its
    notices with are dropped with them.
    """

    def __init__(self, stream_name: str, notices: deque[str], tail: deque[str] | None = None,
                 on_line: Callable[[str], None] | None = None):
        self.stream_name, self.notices, self.tail, self.on_line = stream_name, notices, tail, on_line

    def pump(self, stream: IO[bytes]) -> None:
        """Read ``stream`` to its end (call on a thread of its own: a full pipe would block the job)."""
        blanks: list[str] = []  # held until the next line tells whether they frame a notice
        exit_codes = False  # in Hydra's list of exit codes, which goes on one host a line
        for raw in _lines(stream):
            line = raw.decode(errors="replace")
            if self.tail is not None:
                self.tail.append(line)
            if "UCX  WARN" in line and "mpool" in line:
                continue  # teardown noise from the transport
            if not line.strip():
                blanks.append(line)
                continue
            if is_hydra_notice(line) or (exit_codes and _EXIT_CODES_GO_ON.match(line.strip())):
                self.notices.append(line)
                exit_codes = exit_codes or "Exit codes:" in line
                blanks = []
                continue
            exit_codes = False
            try:
                target = getattr(sys, self.stream_name)  # looked up each time: it may be replaced
                target.write("".join(blanks) + line)
                target.flush()
                if self.on_line is not None:
                    self.on_line(line)
            except Exception:  # keep draining whatever happens to our own streams
                pass
            blanks = []


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    """The lines of ``stream`` as they arrive, and at once a partial line that redraws in place (``\\r...``)."""
    read = stream.read1 if hasattr(stream, "read1") else stream.read
    pending = b""
    while True:
        chunk = read(65536)
        if not chunk:
            break
        *complete, pending = (pending + chunk).split(b"\n")
        for line in complete:
            yield line + b"\n"
        if pending.startswith(b"\r"):  # a progress bar: show it now, not at the next newline
            yield pending
            pending = b""
    if pending:
        yield pending


def show_notices(notices: deque[str]) -> None:
    """Write the held notices to stderr (once: they are cleared)."""
    text = "".join(notices)
    notices.clear()
    if not text:
        return
    try:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")
        sys.stderr.flush()
    except (ValueError, OSError, AttributeError):
        pass
