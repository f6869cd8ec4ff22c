"""Ray processes of a local run die with their driver, even one killed with SIGKILL.

Ray's GCS, raylet and workers share their driver's fate, but its agents (``DashboardAgent``,
``RuntimeEnvAgent``) outlive a killed driver by minutes. :func:`start_reaper` starts a small
watcher process that records the driver's descendants (Linux ``/proc``, twice a second) and holds
a pipe from the driver: when the pipe closes (the driver exited, however it died), it kills every
recorded process that is still the same process (pid and start time). Run as
``python -m vsdloral.distributed.reaper DRIVER_PID``.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

POLL_S = 0.5


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of ``pid`` from /proc, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the name may hold spaces and parentheses
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every living descendant of ``root``: pid -> start time."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                children.setdefault(st[0], []).append(int(entry))
                starts[int(entry)] = st[1]
    out, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in out and pid in starts:
            out[pid] = starts[pid]
            todo += children.get(pid, [])
    return out


def watch(driver: int, pipe_fd: int) -> None:
    """Record ``driver``'s descendants until ``pipe_fd`` reaches EOF, then SIGKILL those alive."""
    seen: dict[int, int] = {}
    me = os.getpid()
    while True:
        seen.update(descendants(driver))
        ready, _, _ = select.select([pipe_fd], [], [], POLL_S)
        if ready and not os.read(pipe_fd, 4096):
            break
    for pid, start in seen.items():
        st = _stat(pid)
        if pid != me and st is not None and st[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def start_reaper() -> subprocess.Popen | None:
    """Start the watcher for this process (None where there is no /proc). Keep the returned
    object alive: its stdin is the pipe whose end tells the watcher that the driver is gone."""
    if not Path("/proc/self/stat").exists():
        return None
    return subprocess.Popen([sys.executable, "-m", "vsdloral.distributed.reaper", str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.stdin.fileno())
