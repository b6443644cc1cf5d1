"""`python -m worker_orcd`: the same as the `worker-orcd` command."""

import sys

from worker_orcd.cli import main

sys.exit(main())
