"""Torch's intra-op thread count, fixed per model and set in whichever thread computes.

PyTorch's CPU results depend on its intra-op thread count (reductions are split per thread), and
that count is per thread: ``torch.set_num_threads`` changes only the calling thread, and a thread
keeps the count it had (VapourSynth's pool threads live for the whole process). So a
:class:`~vsdloral.model.restorer.Restorer` picks one count when it is created and every compute call
runs under :func:`intra_op_threads` with it: the output no longer depends on which thread asks,
on ``core.num_threads`` or on what ran before in the process.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def resolve_threads(threads: int | None) -> int:
    """``None`` -> the calling thread's current count (``torch.get_num_threads()``: the
    ``OMP_NUM_THREADS`` / ``torch.set_num_threads`` of the script that loads the model); else
    ``threads``, checked. Raises ``ValueError`` for anything but a positive int."""
    if threads is None:
        return torch.get_num_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer (torch's intra-op threads), got {threads!r}")
    return threads


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block with torch's intra-op thread count ``n`` in this thread; the thread's own count
    is restored afterwards."""
    prev = torch.get_num_threads()
    if prev != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if prev != n:
            torch.set_num_threads(prev)


def with_own_threads(method: F) -> F:
    """Decorate a method of an object with a ``threads`` attribute: the call runs under
    :func:`intra_op_threads` ``(self.threads)``."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with intra_op_threads(self.threads):
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
