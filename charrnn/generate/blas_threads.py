"""How many threads NumPy's matrix products use, for sampling.

NumPy's wheels bundle OpenBLAS, which starts one thread per core for any
matrix-vector product above a small size. For the few-microsecond products of
sampling that only adds synchronisation, and on a busy machine a thread that
waits for a core turns a 60-microsecond product into milliseconds. NumPy has
no setting for it, so this module calls OpenBLAS's own
`openblas_set_num_threads` (what threadpoolctl does). Another BLAS (MKL,
Accelerate) is left alone: `set_blas_threads` then does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
from collections.abc import Callable, Iterator

_SETTERS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)
_GETTERS = (
    "scipy_openblas_get_num_threads64_",
    "scipy_openblas_get_num_threads",
    "openblas_get_num_threads64_",
    "openblas_get_num_threads",
)
_functions: tuple[Callable, Callable] | None = None
_looked = False


def _openblas_functions() -> tuple[Callable, Callable] | None:
    """(set, get) of the OpenBLAS that NumPy loaded, or None."""
    global _functions, _looked
    if _looked:
        return _functions
    _looked = True
    import numpy

    package = os.path.dirname(numpy.__file__)
    # Wheels keep their bundled libraries in numpy.libs (Linux, Windows) or numpy/.dylibs (macOS).
    patterns = [
        os.path.join(package, os.pardir, "numpy.libs", "*openblas*"),
        os.path.join(package, ".dylibs", "*openblas*"),
    ]
    for path in sorted(path for pattern in patterns for path in glob.glob(pattern)):
        try:
            library = ctypes.CDLL(path)  # already loaded by NumPy: this returns the same library
        except OSError:
            continue
        setter = next((getattr(library, name) for name in _SETTERS if hasattr(library, name)), None)
        getter = next((getattr(library, name) for name in _GETTERS if hasattr(library, name)), None)
        if setter is not None and getter is not None:
            setter.argtypes, setter.restype, getter.restype = [ctypes.c_int], None, ctypes.c_int
            _functions = (setter, getter)
            break
    return _functions


def get_blas_threads() -> int | None:
    """Threads of NumPy's OpenBLAS, or None when NumPy uses another BLAS."""
    functions = _openblas_functions()
    return None if functions is None else int(functions[1]())


def set_blas_threads(threads: int) -> None:
    """Let NumPy's OpenBLAS use `threads` threads (nothing happens with another BLAS)."""
    functions = _openblas_functions()
    if functions is not None and functions[1]() != threads:
        functions[0](max(1, threads))


@contextlib.contextmanager
def blas_threads_restored() -> Iterator[None]:
    """Put NumPy's thread count back as it was when the block ends (sampling changes it meanwhile)."""
    before = get_blas_threads()
    try:
        yield
    finally:
        if before is not None:
            set_blas_threads(before)
