"""`python -m mace_hpc.element MANIFEST [--index N]`: the cheapest way to start the element runner."""

import sys

from .run import main

sys.exit(main())
