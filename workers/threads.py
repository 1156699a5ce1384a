"""Cap native thread pools (OpenBLAS, MKL, OpenMP) inside a worker.

N workers each running a BLAS pool of one thread per core oversubscribe the machine, and
thread pools inherited across ``fork`` are a classic cause of freezes. A worker therefore
caps them to one thread at start, unless the user chose a size through the usual
environment variables (``OMP_NUM_THREADS`` and friends), which then win. Pools already
loaded (numpy's OpenBLAS after ``fork``) are set through their C API, like threadpoolctl.

OpenBLAS re-creates its server threads when its thread count is set after a fork, and a
fresh server thread spins (``sched_yield``) for 2^28 cycles, about 0.1 s of a core, before
it sleeps: with two workers on two cores that was a fifth of the first epoch's CPU. A
worker with one BLAS thread needs no server, so it is shut down right after the cap
(``blas_thread_shutdown_``, the function OpenBLAS's own fork handler calls).
"""

from __future__ import annotations

import ctypes
import os
import re
import sys

__all__ = ["THREAD_ENV", "blas_threads", "limit_threads"]

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
_LIB_PATTERN = re.compile(r"(/\S*(?:openblas|mkl_rt|libgomp|libiomp5|libomp)\S*\.so[\w.]*)")
_SETTERS = ("openblas_set_num_threads", "openblas_set_num_threads64_",
            "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "MKL_Set_Num_Threads", "omp_set_num_threads")
_SHUTDOWNS = ("blas_thread_shutdown_",)  # OpenBLAS: stop the server threads (they restart
#                                          lazily if a later call asks for more threads)
_GETTERS = ("openblas_get_num_threads", "openblas_get_num_threads64_",
            "scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
            "MKL_Get_Max_Threads", "omp_get_max_threads")


_scanned: list[str] | None = None  # a forked child inherits its parent's scan


def _library_paths() -> list[str]:
    """Paths of the loaded thread-pool libraries; scanned once per process image."""
    global _scanned
    if _scanned is None:
        try:
            with open("/proc/self/maps") as maps:
                _scanned = sorted(set(_LIB_PATTERN.findall(maps.read())))
        except OSError:
            _scanned = []
    return _scanned


def scan_before_fork() -> None:
    """Scan in the parent, so forked workers inherit the list instead of re-reading."""
    _library_paths()


def _loaded_libraries() -> list[ctypes.CDLL]:
    libs = []
    paths = _library_paths()
    for path in paths:
        try:
            libs.append(ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY))
        except OSError:
            continue
    return libs


def _functions(names: tuple) -> list:
    return [fn for lib in _loaded_libraries() for name in names
            if (fn := getattr(lib, name, None)) is not None]


def blas_threads() -> int | None:
    """The largest thread count among the loaded native pools (None if none is loaded)."""
    counts = [fn() for fn in _functions(_GETTERS)]
    return max(counts) if counts else None


def limit_threads(limit: int | None) -> None:
    """Cap native pools at ``limit`` threads unless the environment already sets them."""
    if limit is None or any(name in os.environ for name in THREAD_ENV):
        return
    for name in THREAD_ENV:
        os.environ[name] = str(limit)
    for fn in _functions(_SETTERS):
        fn(limit)
    if limit == 1:
        for fn in _functions(_SHUTDOWNS):
            fn()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(limit)
