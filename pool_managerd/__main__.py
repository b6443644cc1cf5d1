"""`python -m pool_managerd`: the same as the `pool-managerd` console script."""

import sys

from pool_managerd.cli import main

sys.exit(main())
