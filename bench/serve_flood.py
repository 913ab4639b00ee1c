"""Does a flood of prediction requests slow a stream's training? Training rate with and without one, side by side.

A stream (launched mode, 2 workers) learns from a prewritten CSV file (size-only
micro-batches, so every run does the same work) while ``--serve``'s server
answers; a separate client process floods it (``--clients`` threads, each
posting ``--rows`` rows at a time) or stays quiet. Runs alternate quiet and
flood, ``--repeat`` times each; it prints micro-batches per second and their
ratio (flood / quiet, 1.0 = not slowed), and the driver process's CPU time
per micro-batch, which, unlike the rate, does not depend on what else the
machine runs: a server that took the driver's time would raise it.

    python bench/serve_flood.py [--records 400000] [--repeat 3] [--clients 6] [--rows 20000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FLOOD = r"""
import http.client, json, os, sys, threading
# The clients stand for other hosts: their own CPU time must not be what slows training (the nice of
# their session too, where the kernel shares CPU time between sessions first).
os.nice(19)
try:
    open("/proc/self/autogroup", "w").write("19")
except OSError:
    pass
host, port, clients, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
big = json.dumps({"X": [[0.5] * 10] * rows}).encode()
small = json.dumps({"X": [[0.5] * 10]}).encode()
done = [0] * clients
def client(i):
    body = big if i % 2 == 0 else small
    while True:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=30)
            while True:
                conn.request("POST", "/predict", body=body)
                conn.getresponse().read()
                done[i] += 1
        except (OSError, http.client.HTTPException):
            pass
for i in range(clients):
    threading.Thread(target=client, args=(i,), daemon=True).start()
while sum(done) < clients:  # every client is answered once before the timing starts
    threading.Event().wait(0.01)
print("ready", flush=True)
sys.stdin.read()  # until the bench closes it
print(sum(done), flush=True)
"""


def write_stream(path: Path, records: int) -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((records, 10))
    y = X @ rng.standard_normal(10)
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", fmt="%.6g")


def wait_for_server(port: int) -> None:
    import urllib.request

    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/model", timeout=5).read()
            return
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def one_run(path: Path, flood: bool, args: argparse.Namespace, make_server) -> tuple[float, float, int]:
    """Micro-batches per second, the driver's CPU milliseconds per micro-batch, requests answered."""
    import drizzle_ml as dm
    from drizzle_ml.algorithms.stream import stream_fit

    est = dm.LinearRegression(n_workers=2)
    est.model_store_ = dm.ModelStore()
    server = make_server(est)
    client = None
    wait_for_server(server.port)
    try:
        if flood:
            client = subprocess.Popen([sys.executable, "-c", FLOOD, "127.0.0.1", str(server.port), str(args.clients),
                                       str(args.rows)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      start_new_session=True)
            assert client.stdout.readline().strip() == "ready"
        start, cpu = time.perf_counter(), time.process_time()
        stream_fit(est, dm.FileSource(str(path), follow=False), n_features=10, max_batch=args.max_batch,
                   batch_interval=None, idle_timeout=5.0)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        answered = 0
        if client is not None:
            client.stdin.close()
            answered = int(client.stdout.read() or 0)
            client.wait(timeout=60)
        return est.n_iter_ / wall, 1e3 * cpu / est.n_iter_, answered
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        server.close()


def main(argv: list[str] | None = None, make_server=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=400_000)
    parser.add_argument("--max-batch", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--rows", type=int, default=20_000, help="rows per request of the big-request clients")
    args = parser.parse_args(argv)
    if make_server is None:
        from drizzle_ml.launch.serve import PredictionServer

        def make_server(est):
            return PredictionServer(est, "127.0.0.1", 0)

    import drizzle_ml as dm

    dm.get_cluster(2)  # start the workers once, outside the timings
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stream.csv"
        write_stream(path, args.records)
        rates: dict[bool, list[float]] = {False: [], True: []}
        cpus: dict[bool, list[float]] = {False: [], True: []}
        for i in range(args.repeat):
            for flood in (False, True):
                rate, cpu, answered = one_run(path, flood, args, make_server)
                rates[flood].append(rate)
                cpus[flood].append(cpu)
                print(f"run {i + 1} {'flood' if flood else 'quiet'}: {rate:8.1f} micro-batches/s, driver CPU "
                      f"{cpu:.2f} ms per micro-batch" + (f", {answered} requests answered" if flood else ""),
                      flush=True)
    quiet, loud = statistics.median(rates[False]), statistics.median(rates[True])
    cpu_quiet, cpu_loud = statistics.median(cpus[False]), statistics.median(cpus[True])
    print(f"median micro-batches/s: quiet {quiet:.1f}, flood {loud:.1f}, ratio flood/quiet {loud / quiet:.2f}; "
          f"driver CPU ms per micro-batch: quiet {cpu_quiet:.2f}, flood {cpu_loud:.2f}, "
          f"ratio {cpu_loud / cpu_quiet:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
