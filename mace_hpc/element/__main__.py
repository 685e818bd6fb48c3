"""`python -m mace_hpc.element MANIFEST [--index N]`: the cheapest way to start the element runner.

Importing this module (not running it) only imports the runner: the local backend's worker
interpreters run it once per element (`runpy`, as `python -m` would) without paying for a new
interpreter and its imports per element.
"""

import importlib
import importlib.util
import sys
import types
from typing import Any


class _RunOnFirstUse(types.ModuleType):
    """A standard-library module that `import` finds in `sys.modules` but whose code only runs when
    one of its attributes is first asked for; then the real module replaces it there and lends it
    its namespace, so every holder of this one sees the real attributes.

    `importlib.util.LazyLoader` is the standard tool, but before Python 3.14 importing a lazy module
    a second time runs it (the import system reads its `__spec__`: cpython issue 127036), which is
    exactly what `dataclasses` does."""

    def __getattr__(self, attr: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = importlib.import_module(self.__name__)
        self.__dict__.update(real.__dict__)
        return getattr(real, attr)


def _run_on_first_use(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    module = _RunOnFirstUse(name)
    module.__spec__ = spec
    sys.modules[name] = module


# `dataclasses` imports `inspect` (which pulls `ast`, `dis`, `tokenize`: ~9% of a plain element's
# instructions) only to describe a class without a docstring; the runner's classes all have one
_run_on_first_use("inspect")

from .run import main  # noqa: E402 - after the module above, so dataclasses finds it

if __name__ == "__main__":
    sys.exit(main())
