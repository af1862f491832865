"""``python -m fastrnn.bench``: the benchmark's command line (see :func:`fastrnn.bench.main`)."""
import sys

from . import main

sys.exit(main())
