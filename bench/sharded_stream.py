"""Sharded vs replicated FTRL streams of a wide hashed model, side by side.

``python bench/sharded_stream.py [--bits 20] [--records 600000] [--batch 2000] [--rate 20000]
[--seconds 5] [--repeat 3]``

An L1 logistic regression (FTRL-proximal) learns token records hashed into
``2**bits`` columns on 2 workers, once with its state replicated on every
worker and once sharded (each worker updates and publishes its half; the
driver assembles every version from both halves). Two measurements per
mode, alternating the modes in each round:

* throughput: a prewritten token file, micro-batches of ``--batch`` records
  per worker cut by size: records/s, and how many of the versions made became visible
  (a version is skipped when a worker's publication slots are all busy);
* latency: a producer process appends records at ``--rate`` records/s for
  ``--seconds`` (micro-batch interval 10 ms): event-to-model latency, from a
  record's arrival at a worker's reader to the driver making visible a
  version that includes it (each record at its batch's oldest arrival).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import drizzle_ml as dm
from drizzle_ml.launch.bench_streaming import _PRODUCER, cpu_times, steal_share


class CountingStore(dm.ModelStore):
    """A store that counts the versions made visible by publication."""

    def __init__(self) -> None:
        super().__init__(history=4)
        self.published = 0

    def publish(self, *args, **kwargs):
        self.published += 1
        return super().publish(*args, **kwargs)


def token_lines(n: int, seed: int) -> bytes:
    """Click-like records: a label and 8 ``field=value`` tokens from large vocabularies."""
    rng = np.random.default_rng(seed)
    fields = np.column_stack([rng.zipf(1.3, n) % 1_000_000 for _ in range(8)])
    label = (fields[:, 0] % 7 < 3).astype(int)
    return "".join(f"{y} " + " ".join(f"f{j}={v}" for j, v in enumerate(row)) + "\n"
                   for y, row in zip(label, fields)).encode()


def stream(path: str, sharding: str, bits: int, follow: bool, on_group=None, **kw) -> dict:
    est = dm.LogisticRegression(penalty="l1", C=1.0, n_workers=2, sharding=sharding)
    store = est.model_store_ = CountingStore()
    before = cpu_times()
    dm.stream_fit(est, dm.FileSource(path, follow=follow, block_size=1 << 16), classes=[0, 1],
                  record_format="tokens", hash_features=bits, on_group=on_group, **kw)
    s = est.stream_stats_
    phases = {k: 1e3 * sum(g[k] for g in est.history_) / max(est.model_version_, 1)
              for k in ("compute", "reduce", "update", "broadcast")}
    return {"phases": phases, "rate": s["records"] / s["wall"], "records": s["records"], "versions": est.model_version_,
            "visible": store.published, "p50": s.get("latency_p50", float("nan")),
            "p99": s.get("latency_p99", float("nan")), "reduction": est.history_[-1]["reduction"],
            "steal": steal_share(before, cpu_times())}


def latency_run(directory: str, sharding: str, bits: int, rate: float, seconds: float) -> dict:
    path = os.path.join(directory, f"live-{sharding}-{time.monotonic_ns()}.tokens")
    open(path, "wb").close()
    tick = 0.005
    chunk_path = os.path.join(directory, "chunk.tokens")
    with open(chunk_path, "wb") as f:
        f.write(token_lines(max(1, int(rate * tick)), 1))
    producer = subprocess.Popen([sys.executable, "-c", _PRODUCER, path, chunk_path, str(tick), str(seconds)],
                                stdin=subprocess.PIPE)

    def start(_group) -> None:  # the producer starts with the first group: start-up is no latency
        if producer.stdin is not None and not producer.stdin.closed:
            producer.stdin.write(b"\n")
            producer.stdin.close()

    try:
        return stream(path, sharding, bits, True, on_group=start, batch_interval=0.01, max_batch=100_000,
                      idle_timeout=1.0)
    finally:
        producer.wait(timeout=seconds + 60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=20)
    parser.add_argument("--records", type=int, default=600_000)
    parser.add_argument("--rate", type=float, default=20_000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2000, help="prewritten: records per worker micro-batch")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "prewritten.tokens")
        with open(path, "wb") as f:
            f.write(token_lines(args.records, 0))
        stream(path, "replicated", args.bits, False, batch_interval=None, max_batch=args.batch)  # warm up
        rows = []
        for round_ in range(args.repeat):
            for sharding in ("replicated", "sharded"):
                t = stream(path, sharding, args.bits, False, batch_interval=None, max_batch=args.batch)
                lat = latency_run(directory, sharding, args.bits, args.rate, args.seconds)
                rows.append((round_, sharding, t, lat))
    print(f"2**{args.bits} coordinates, 2 workers, L1 logistic (FTRL); latency at {args.rate:,.0f} records/s")
    print("| round | model | reduction | prewritten records/s | versions visible | "
          "live records/s | latency p50 | latency p99 | stolen |")
    print("|---|---|---|---|---|---|---|---|---|")
    for round_, sharding, t, lat in rows:
        print(f"| {round_ + 1} | {sharding} | {t['reduction']} | {t['rate']:,.0f} | {t['visible']}/{t['versions']} | "
              f"{lat['rate']:,.0f} | {lat['p50'] * 1e3:.1f} ms | {lat['p99'] * 1e3:.1f} ms | "
              f"{max(t['steal'], lat['steal']):.0%} |")
    print("\nprewritten, per version (ms): compute (local) / reduce / update / broadcast or all-gather")
    for round_, sharding, t, _ in rows:
        print(f"  round {round_ + 1} {sharding:>10}: " + " / ".join(f"{v:.1f}" for v in t["phases"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
