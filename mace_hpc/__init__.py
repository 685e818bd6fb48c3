"""mace-hpc: isolated MACE materials workflows on HPC job arrays.

Imports are kept lazy so that `mace --help` and the element runner start fast.
"""

__version__ = "0.1.0"
