"""Running a command's MPI job on several hosts: ``--hosts`` / ``--hostfile`` and the placement line.

Shared by the commands that build their own ``mpiexec`` (``train``; ``stream``
reuses the same two functions). The options translate to MPICH Hydra's
``-hosts`` and ``-f``; rank 0, the driver, runs on the first host listed.
"""

from __future__ import annotations

import argparse
import os
import shlex

from .common import CLIError

#: mpiexec options that also choose hosts; giving them in --mpiexec-args as well is ambiguous.
_MPIEXEC_HOST_OPTIONS = ("-hosts", "-host", "-f", "-hostfile", "-machinefile")


def add_host_arguments(parser: argparse.ArgumentParser) -> None:
    """``--hosts H1,H2`` and ``--hostfile FILE`` (mutually exclusive)."""
    group = parser.add_argument_group("hosts (default: every rank on this machine)")
    choice = group.add_mutually_exclusive_group()
    choice.add_argument("--hosts", default=None, metavar="H1,H2,...",
                        help="run the ranks on these hosts (mpiexec -hosts; 'host:N' for N ranks there); "
                             "rank 0, the driver, runs on the first")
    choice.add_argument("--hostfile", default=None, metavar="FILE",
                        help="MPICH host file, one 'host[:N]' per line (mpiexec -f)")


def host_mpiexec_args(args: argparse.Namespace) -> list[str]:
    """The ``mpiexec`` arguments for ``args.hosts`` / ``args.hostfile`` ([] for neither); CLIError if unusable."""
    if args.hosts is None and args.hostfile is None:
        return []
    extra = shlex.split(getattr(args, "mpiexec_args", "") or "")
    clash = next((a for a in extra if a.split("=", 1)[0] in _MPIEXEC_HOST_OPTIONS), None)
    if clash:
        raise CLIError(f"--mpiexec-args has {clash} too: give the hosts once, with --hosts/--hostfile or "
                       "in --mpiexec-args")
    if args.hosts is not None:
        names = [h.strip() for h in args.hosts.split(",")]
        if not all(names):
            raise CLIError(f"--hosts: empty host name in {args.hosts!r}")
        return ["-hosts", ",".join(names)]
    path = args.hostfile
    if not os.path.isfile(path):
        raise CLIError(f"hostfile not found: {path}")
    try:
        with open(path) as f:
            lines = [ln.split("#", 1)[0].strip() for ln in f]
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"hostfile {path}: {exc}") from None
    if not any(lines):
        raise CLIError(f"hostfile {path} lists no hosts")
    # Absolute: mpiexec may run in another working directory than the one the user typed in.
    return ["-f", os.path.abspath(path)]


def reject_under_user_mpiexec(args: argparse.Namespace) -> None:
    """Under an ``mpiexec`` the user started, the ranks are already placed: --hosts/--hostfile are errors."""
    for option, value in (("--hosts", args.hosts), ("--hostfile", args.hostfile)):
        if value is not None:
            raise CLIError(f"{option} chooses hosts for the mpiexec that drizzle-ml starts; under your own "
                           f"mpiexec, give the hosts to it (mpiexec -hosts ... or -f FILE)")


def placement_line(placement: dict[str, list[int]]) -> str:
    """``rank 0 (driver), rank 1 on a; ranks 2-3 on b`` from :meth:`Cluster.placement`."""
    parts = []
    for host, ranks in placement.items():
        runs: list[list[int]] = []
        for rank in sorted(ranks):
            if runs and rank == runs[-1][-1] + 1 and runs[-1][0] != 0:
                runs[-1].append(rank)
            else:
                runs.append([rank])
        words = [("rank 0 (driver)" if run == [0] else f"rank {run[0]}" if len(run) == 1
                  else f"ranks {run[0]}-{run[-1]}") for run in runs]
        parts.append(f"{', '.join(words)} on {host}")
    return "; ".join(parts)
