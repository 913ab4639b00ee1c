"""``drizzle-ml bench recovery`` from a source checkout: see drizzle_ml.launch.bench_recovery."""

import sys

from drizzle_ml.launch.bench_recovery import main

if __name__ == "__main__":
    sys.exit(main())
