"""The Ray task: :func:`vsdloral.distributed.render.render_chunk` reporting to the progress board."""

from __future__ import annotations

import os
import socket


def render_chunk_task(spec: dict, index: int, start: int, end: int, board) -> dict:
    """Render chunk ``index`` (frames ``[start, end)``); frames done go to ``board`` (a
    :class:`~vsdloral.distributed.progress.ProgressBoard` actor), fire-and-forget."""
    from .render import render_chunk

    worker = f"{socket.gethostname()}:{os.getpid()}"

    def report(done: int) -> None:
        board.update.remote(index, worker, done)

    return render_chunk(spec, index, start, end, report)
