"""`python -S <this file> MANIFEST ...`: the element runner, with site-packages only on demand.

Site initialisation (every `.pth` file of the environment, editable-install finders,
`sitecustomize`) costs ~50 ms of CPU in a bare interpreter on the CI machine; the runner imports
much of what it loads anyway, so skipping it saves ~17 ms of the runner's ~150 (more where
conda or module-system environments carry more `.pth` files). The runner itself needs only the
standard library and this package, so it starts without site (`-S`) and with the directory holding `mace_hpc` first on
`sys.path`. Site is started, once, when something needs it: before a function step imports the
user's code (`ensure_site`), and for the first later top-level import that neither satisfies
(PyYAML for a YAML config, psutil for a contended lock, boto3 for an S3 archive), which is then
retried. Commands that steps start are new interpreters with their own site.
"""

from __future__ import annotations

import os
import sys


class _SiteOnMiss:
    """Last on `sys.meta_path`: a top-level module nothing else finds starts site, once, and the
    import is retried with site's paths and finders in place. Not for the standard library's own
    names: it probes for optional modules (`_winapi`, ...) whose absence site cannot change, and
    starting site in the middle of a standard module's import would hand its `.pth` files a
    half-initialised module."""

    @classmethod
    def find_spec(cls, name: str, path: object = None, target: object = None) -> object:
        if path is not None or name in sys.stdlib_module_names:  # a submodule: its package was found
            return None
        ensure_site()
        import importlib.util

        return importlib.util.find_spec(name)


def ensure_site() -> None:
    """Set up site-packages now if this interpreter started without them (`-S`): user code sees
    the environment `python` would have given it. Once; a no-op under a normal start."""
    if _SiteOnMiss in sys.meta_path:
        sys.meta_path.remove(_SiteOnMiss)
        import site

        site.main()


def _start() -> int:
    # this file's directory is sys.path[0] (a script's); the package's parent replaces it, so
    # `mace_hpc` and nothing from inside it resolves at top level
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from mace_hpc.element.__main__ import main  # lazy: sys.path holds the package only from here

    # only now: while the runner's own modules load, standard ones probe for optional modules
    # (`copy` for Jython's `org`), and site must not start in the middle of one (tested: the
    # runner imports nothing from site-packages)
    if sys.flags.no_site:
        sys.meta_path.append(_SiteOnMiss)
    return main()


if __name__ == "__main__":
    sys.exit(_start())
