"""``python -m drizzle_ml``: the ``drizzle-ml`` command line."""

import sys

from drizzle_ml.launch.cli import main

sys.exit(main())
