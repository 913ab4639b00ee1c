"""``drizzle-ml bench scale`` from a source checkout: see drizzle_ml.launch.bench_scale."""

import sys

from drizzle_ml.launch.bench_scale import main

if __name__ == "__main__":
    sys.exit(main())
