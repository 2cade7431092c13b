"""`python -m benchmarks NAME [options]`: runs one benchmark, or lists them all without a name."""

import sys

from benchmarks import main

sys.exit(main(sys.argv[1:]))
