"""What, besides the job's settings, changes a chunk's bytes: the software and the CPU that render it.

A work folder's job records it (:func:`runtime_identity`), so a resume after an upgrade of
vsdloral, torch or ffmpeg, or on a CPU of another instruction-set level, is refused instead of
joining chunks of two renders; every node of a cluster must agree on it (:func:`node_differences`).
"""

from __future__ import annotations

import shutil
import subprocess


def ffmpeg_version() -> str | None:
    """The version ``ffmpeg -version`` reports (``6.1.1-3ubuntu5``), None without ffmpeg."""
    exe = shutil.which("ffmpeg")
    if not exe:
        return None
    try:
        first = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        return None
    words = first.split()
    return words[2] if len(words) > 2 and words[:2] == ["ffmpeg", "version"] else first.strip() or None


def runtime_identity() -> dict[str, str | None]:
    """This machine's vsdloral, torch and ffmpeg versions and the CPU's instruction-set level as
    torch uses it (``torch.backends.cpu.get_cpu_capability()``: DEFAULT, AVX2, AVX512, ...)."""
    import torch

    from .. import __version__

    return {"vsdloral": __version__, "torch": torch.__version__, "ffmpeg": ffmpeg_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def node_differences(identities: dict[str, dict]) -> list[str]:
    """One line per runtime key on which the nodes (name -> :func:`runtime_identity`) disagree,
    naming each value and its nodes; empty when they all agree."""
    out = []
    keys = sorted({k for ident in identities.values() for k in ident})
    for k in keys:
        by_value: dict = {}
        for node, ident in sorted(identities.items()):
            by_value.setdefault(ident.get(k), []).append(node)
        if len(by_value) > 1:
            out.append(f"{k} differs: " + ", ".join(f"{v} on {', '.join(nodes)}" for v, nodes in by_value.items()))
    return out
