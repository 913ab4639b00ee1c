"""Two real "hosts" on one machine, for multi-host tests: Linux namespaces joined by a veth pair.

Each host is a process tree in its own network, UTS (hostname), IPC and
mount namespace, held open by an *anchor* process (``sleep``). The mount
namespace gets a private ``/dev/shm`` (tmpfs), its own ``/etc/hosts`` (both
hostnames resolve to the veth addresses) and its own ``/sys`` (so the veth
counters under ``/sys/class/net`` are this host's). Without the IPC/mount
split MPICH would find the other "host" through shared memory and nothing
would cross the link.

MPICH's Hydra reaches the second host through its ssh launcher pointed at a
generated wrapper (``HYDRA_LAUNCHER_EXEC``) that, like ssh, takes
``[options] HOST command...`` and runs the command inside HOST's namespaces
with ``nsenter``. Everything made here (anchors, the processes inside the
namespaces, the veth pair, the temp directory) is removed by
:meth:`TwoHosts.close`, and :func:`cleanup_leftovers` removes what a
crashed run left behind.

Run by hand (as root, from the repository): ``python -m tests.netns CMD...``
runs CMD inside host A and tears the hosts down after it; without CMD it
prints how to enter host A from a shell and waits for Enter.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

#: Marks anchor processes in their environment, so a later run can find leftovers.
ANCHOR_VAR = "DRIZZLE_NETNS_ANCHOR"
HOSTS = ("dzml-a", "dzml-b")
ADDRESSES = ("10.213.7.1", "10.213.7.2")
#: The veth end has this name inside both namespaces (root-namespace names are temporary).
IFACE = "dzml0"
ROOT_NAMES = ("dzml-va", "dzml-vb")
TIMEOUT = 20.0
WORKDIR_PREFIX = "drizzle-netns-"


def _run(cmd: list[str], timeout: float = TIMEOUT) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def unavailable() -> str | None:
    """Why the harness cannot run here (a skip reason), or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed"
    try:
        subprocess.run(["unshare", "--net", "--uts", "--ipc", "--mount", "true"], check=True,
                       capture_output=True, timeout=TIMEOUT)
    except (subprocess.SubprocessError, OSError) as exc:
        return f"unshare of net/uts/ipc/mount namespaces fails here: {exc}"
    return None


def _ns_inode(pid: int, kind: str = "net") -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def _environ(pid: int) -> dict[bytes, bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
    except OSError:
        return {}


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _kill_namespaces(net_namespaces: set[str], timeout: float = 10.0) -> None:
    """SIGKILL every process in these network namespaces; wait until they are gone."""
    deadline = time.monotonic() + timeout
    while net_namespaces:
        members = [p for p in _pids() if p != os.getpid() and _ns_inode(p) in net_namespaces]
        if not members:
            return
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes in the test namespaces survive SIGKILL: {members}")
        time.sleep(0.05)


def cleanup_leftovers() -> None:
    """Remove what a crashed earlier run left: its anchors, their namespaces' processes, the veth pair."""
    anchors = [p for p in _pids() if ANCHOR_VAR.encode() in _environ(p)]
    _kill_namespaces({ns for ns in map(_ns_inode, anchors) if ns})
    for name in ROOT_NAMES:
        if os.path.exists(f"/sys/class/net/{name}"):
            subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=TIMEOUT)
    for stale in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):  # its mounts died with its namespaces
        shutil.rmtree(stale, ignore_errors=True)


class TwoHosts:
    """Hosts ``dzml-a`` and ``dzml-b`` (10.213.7.1, .2) joined by a veth link; see the module doc.

    ``workdir`` is a temp directory visible from both hosts; ``workdir/local``
    is a tmpfs private to each host (a file copied there with
    :meth:`copy_to` exists on that host only).
    """

    def __init__(self) -> None:
        cleanup_leftovers()
        self.anchors: dict[str, subprocess.Popen] = {}
        self.workdir = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        hosts_file = self.workdir / "hosts"
        hosts_file.write_text("127.0.0.1 localhost\n" + "".join(f"{a} {h}\n" for h, a in zip(HOSTS, ADDRESSES)))
        (self.workdir / "local").mkdir()
        for host in HOSTS:
            # --propagation private (the default): mounts made inside stay inside.
            self.anchors[host] = subprocess.Popen(
                ["unshare", "--net", "--uts", "--ipc", "--mount", "--propagation", "private",
                 "sleep", "infinity"], env={**os.environ, ANCHOR_VAR: host}, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + TIMEOUT
        for anchor in self.anchors.values():  # unshare has exec'd sleep once the namespaces differ
            while _ns_inode(anchor.pid) == _ns_inode(os.getpid()) or _ns_inode(anchor.pid, "mnt") == \
                    _ns_inode(os.getpid(), "mnt"):
                if anchor.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("unshare did not create the namespaces")
                time.sleep(0.01)
        _run(["ip", "link", "add", ROOT_NAMES[0], "type", "veth", "peer", "name", ROOT_NAMES[1]])
        for host, root_name, address in zip(HOSTS, ROOT_NAMES, ADDRESSES):
            _run(["ip", "link", "set", root_name, "netns", str(self.anchors[host].pid)])
            self.sh(host, f"""
                set -e
                hostname {host}
                ip link set lo up
                ip link set {root_name} name {IFACE}
                ip addr add {address}/24 dev {IFACE}
                ip link set {IFACE} up
                mount -t tmpfs -o size=256m tmpfs /dev/shm
                mount --bind {hosts_file} /etc/hosts
                mount -t sysfs sysfs /sys
                mount -t tmpfs -o size=64m tmpfs {self.workdir / "local"}
            """)
        self.wrapper = self.workdir / "launcher"
        cases = "".join(f"  {h}) pid={a.pid} ;;\n" for h, a in self.anchors.items())
        # Hydra calls its ssh launcher as: LAUNCHER [-x] HOST command... (the command is one shell string
        # split into words, as ssh would pass it to the remote shell).
        self.wrapper.write_text(f"""#!/bin/sh
while [ $# -gt 0 ]; do case "$1" in -o|-p|-l|-i) shift 2 ;; -*) shift ;; *) break ;; esac; done
host="$1"; shift
case "$host" in
{cases}  *) echo "drizzle-netns launcher: unknown host $host" >&2; exit 255 ;;
esac
exec nsenter -t "$pid" -n -u -i -m -- sh -c "$*"
""")
        self.wrapper.chmod(0o755)

    def command(self, host: str, cmd: list[str], cwd: str | os.PathLike | None = None) -> list[str]:
        """``cmd`` to run inside ``host``'s namespaces, in ``cwd`` (default: this process's)."""
        # Without --wd, entering a mount namespace moves the working directory to its root.
        return ["nsenter", "-t", str(self.anchors[host].pid), "-n", "-u", "-i", "-m", f"--wd={cwd or os.getcwd()}",
                "--", *cmd]

    def sh(self, host: str, script: str, timeout: float = TIMEOUT) -> str:
        return _run(self.command(host, ["sh", "-c", script]), timeout=timeout)

    def env(self) -> dict[str, str]:
        """Environment for an ``mpiexec`` started in host A that reaches host B over the veth link."""
        return {"HYDRA_LAUNCHER": "ssh", "HYDRA_LAUNCHER_EXEC": str(self.wrapper)}

    def rx_bytes(self) -> dict[str, int]:
        """Bytes each host has received on its veth end so far."""
        return {h: int(self.sh(h, f"cat /sys/class/net/{IFACE}/statistics/rx_bytes")) for h in HOSTS}

    def copy_to(self, host: str, src: str | os.PathLike, name: str) -> str:
        """Copy ``src`` into ``host``'s private ``workdir/local``; the path, valid on that host only."""
        dst = str(self.workdir / "local" / name)
        self.sh(host, f"cp '{src}' '{dst}'")
        return dst

    def pids_in(self, host: str) -> list[int]:
        """Processes inside ``host``'s namespaces, its anchor excepted."""
        anchor = self.anchors[host].pid
        net = _ns_inode(anchor)
        return [p for p in _pids() if p != anchor and _ns_inode(p) == net]

    def close(self) -> None:
        _kill_namespaces({ns for ns in (_ns_inode(a.pid) for a in self.anchors.values()) if ns})
        for anchor in self.anchors.values():
            anchor.wait(timeout=TIMEOUT)
        for name in ROOT_NAMES:  # only if setup failed before moving them
            if os.path.exists(f"/sys/class/net/{name}"):
                subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=TIMEOUT)
        shutil.rmtree(self.workdir, ignore_errors=True)


def main(argv: list[str]) -> int:
    """``python -m tests.netns [CMD...]``: CMD inside host A (with the launcher set up), or a shell's recipe."""
    reason = unavailable()
    if reason:
        raise SystemExit(f"cannot set up the test hosts: {reason}")
    hosts = TwoHosts()
    try:
        if argv:
            return subprocess.run(hosts.command(HOSTS[0], argv), env={**os.environ, **hosts.env()}).returncode
        print(f"hosts {', '.join(HOSTS)} up; in another terminal:\n  "
              f"{' '.join(f'{k}={v}' for k, v in hosts.env().items())} {' '.join(hosts.command(HOSTS[0], ['bash']))}"
              f"\nthen, for example: drizzle-ml train --workers 2 --hosts {HOSTS[0]}:2,{HOSTS[1]}:1\n"
              "Press Enter here to tear them down.")
        input()
        return 0
    finally:
        hosts.close()


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
