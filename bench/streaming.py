"""Streaming benchmark: event-to-model latency and throughput (same as ``drizzle-ml bench streaming``)."""

import sys

from drizzle_ml.launch.bench_streaming import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
