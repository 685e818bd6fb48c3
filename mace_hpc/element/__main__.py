"""`python -m mace_hpc.element MANIFEST [--index N]`: the cheapest way to start the element runner.

Importing this module (not running it) only imports the runner: the local backend's worker
interpreters run it once per element (`runpy`, as `python -m` would) without paying for a new
interpreter and its imports per element.
"""

import sys

from .run import main

if __name__ == "__main__":
    sys.exit(main())
