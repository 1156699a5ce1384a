"""Errors a DataLoader raises about its workers, in torch's words and then some.

- :class:`WorkerError`: a worker died or stopped answering ("it broke under you").
- :func:`rebuild_exception`: an exception raised by user code in a worker, rebuilt in the
  main process with its own type, "Caught ValueError in DataLoader worker process 2", the
  failing batch's indices and the worker's traceback.
- :class:`StallWarning`: a worker is alive but no batch came for ``stall_warning_s``.
"""

from __future__ import annotations

import pickle
import signal
from typing import Any

__all__ = ["DataLoaderTimeoutError", "KeyErrorMessage", "StallWarning", "WorkerError",
           "describe_exit", "exit_reason", "rebuild_exception"]

_MAX_INDEX_TEXT = 200  # characters of a batch's indices shown in a message


def shown(indices: Any) -> str:
    """A batch's indices for a message, cut to :data:`_MAX_INDEX_TEXT` characters."""
    text = repr(indices)
    return text if len(text) <= _MAX_INDEX_TEXT else text[:_MAX_INDEX_TEXT] + "...]"


class WorkerError(RuntimeError):
    """A DataLoader worker died or failed outside user code; the loader is shut down."""

    def __init__(self, message: str, worker_id: int | None = None, pid: int | None = None,
                 exitcode: int | None = None) -> None:
        super().__init__(message)
        self.worker_id, self.pid, self.exitcode = worker_id, pid, exitcode


class DataLoaderTimeoutError(RuntimeError):
    """No batch arrived within ``timeout`` seconds."""


class StallWarning(RuntimeWarning):
    """No batch arrived for ``stall_warning_s`` seconds although work is outstanding; the
    message names the worker, its pid, the batch, its indices and the worker's stacks.
    A warning, so the loader keeps waiting; ``warnings.simplefilter("error", StallWarning)``
    makes it an exception raised from ``next()``."""


class KeyErrorMessage(str):
    """A str whose repr is itself, so a KeyError's multi-line message stays readable."""

    def __repr__(self) -> str:
        return self


_CAUSES = {
    signal.SIGKILL: "The worker was killed from outside, most often by the out-of-memory "
                    "killer: reduce memory use (batch_size, num_workers, prefetch_factor) or "
                    "raise the memory limit.",
    signal.SIGBUS: "It is possible that dataloader's workers are out of shared memory. "
                   "Please try to raise your shared memory limit.",
    signal.SIGSEGV: "The worker crashed in native code (a segmentation fault in an extension "
                    "or in the dataset's C code).",
}


def describe_exit(worker_id: int, pid: int, exitcode: int) -> str:
    """Torch's sentence for a dead worker, then which worker and the likely cause."""
    if exitcode < 0:
        try:
            sig = signal.Signals(-exitcode)
            name = signal.strsignal(sig) or sig.name
        except ValueError:
            sig, name = None, f"signal {-exitcode}"
        text = f"DataLoader worker (pid {pid}) is killed by signal: {name}. "
        text += f"(worker {worker_id}, {sig.name if sig else name}) "
        text += _CAUSES.get(sig, "")
    else:
        text = (f"DataLoader worker (pid {pid}) exited unexpectedly with exit code {exitcode}. "
                f"(worker {worker_id}) Details are lost due to multiprocessing. Rerunning with "
                "num_workers=0 may give better error trace.")
    return text.rstrip()


def exit_reason(exitcode: int | None) -> str:
    """How a process ended, in a few words: "killed by SIGSEGV (Segmentation fault)"."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            sig = signal.Signals(-exitcode)
            return f"killed by {sig.name} ({signal.strsignal(sig) or sig.name})"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


def rebuild_exception(exc_type_bytes: bytes | None, type_name: str, worker_id: int,
                      indices: object, text: str) -> BaseException:
    """The exception to raise in the main process for a failure in worker ``worker_id``."""
    exc_type: type = RuntimeError
    if exc_type_bytes is not None:
        try:
            exc_type = pickle.loads(exc_type_bytes)
        except Exception:  # the class cannot be imported here: fall back to RuntimeError
            pass
    if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
        exc_type = RuntimeError
    where = f"Caught {type_name} in DataLoader worker process {worker_id}."
    if indices is not None:
        where += f"\nWhile fetching indices {shown(indices)}."
    msg = f"{where}\nOriginal {text}"
    if exc_type is KeyError:
        msg = KeyErrorMessage(msg)
    elif getattr(exc_type, "message", None) is not None:  # torch's rule for such classes
        try:
            return exc_type(message=msg)
        except Exception:
            pass
    try:
        return exc_type(msg)
    except Exception:  # e.g. several required arguments (pytorch #30147)
        return RuntimeError(msg)
