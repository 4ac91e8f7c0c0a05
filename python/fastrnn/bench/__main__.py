"""``python -m fastrnn.bench``: the benchmark's command line (:func:`fastrnn.bench.cli.main`)."""
import sys

from fastrnn.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
