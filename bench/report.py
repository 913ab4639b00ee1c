"""``drizzle-ml bench report -o DIR`` from a source checkout: see drizzle_ml.launch.bench_report."""

import sys

from drizzle_ml.launch.bench_report import main

if __name__ == "__main__":
    sys.exit(main())
