"""Set the thread count of the OpenBLAS that NumPy loaded, at run time (the numpy backend's row threads).

NumPy's wheels bundle OpenBLAS (scipy-openblas: symbols `scipy_openblas_set_num_threads64_` /
`scipy_openblas_get_num_threads64_`; other builds export `openblas_set_num_threads` / `openblas_get_num_threads`).
The library is found among the shared objects this process has mapped (/proc/self/maps), after NumPy's linear
algebra module is imported. Anything else (MKL, Apple Accelerate, a platform without /proc) gives `find() ->
None`, and the numpy backend then runs its rows on one thread as before.
"""
from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager

NAME_PAIRS = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
              ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
              ("openblas_set_num_threads", "openblas_get_num_threads"))


class BlasThreads:
    """The loaded OpenBLAS's thread count: `get()`, `set(n)`, and `limit(n)` (a context manager that restores it)."""

    def __init__(self, set_fn, get_fn, path: str):
        self._set, self._get, self.path = set_fn, get_fn, path

    def get(self) -> int:
        return int(self._get())

    def set(self, threads: int) -> None:
        self._set(int(threads))

    @contextmanager
    def limit(self, threads: int):
        before = self.get()
        self.set(threads)
        try:
            yield
        finally:
            self.set(before)


def _mapped_openblas() -> list[str]:
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.exists(p))


def find() -> BlasThreads | None:
    """The OpenBLAS NumPy uses, or None where it cannot be controlled (see the module docstring)."""
    import numpy.linalg  # noqa: F401  (loads NumPy's BLAS)
    for path in _mapped_openblas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for set_name, get_name in NAME_PAIRS:
            set_fn, get_fn = getattr(lib, set_name, None), getattr(lib, get_name, None)
            if set_fn is not None and get_fn is not None:
                set_fn.argtypes, set_fn.restype, get_fn.restype = [ctypes.c_int], None, ctypes.c_int
                return BlasThreads(set_fn, get_fn, path)
    return None
