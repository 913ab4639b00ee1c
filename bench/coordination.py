"""Coordination benchmark: ``python bench/coordination.py [--json PATH]``.

Same as ``drizzle-ml bench coordination``; the implementation lives in
:mod:`drizzle_ml.launch.bench_coordination` so the installed command can run it too.
"""

import sys

from drizzle_ml.launch.bench_coordination import main

if __name__ == "__main__":
    sys.exit(main(["coordination", *sys.argv[1:]]))
