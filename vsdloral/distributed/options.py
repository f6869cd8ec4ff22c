"""The ``vsdloral upscale`` options of the chunked mode (they need no Ray to parse)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--workers``, ``--devices``, ``--ray``, ``--chunk-frames`` and ``--work-dir`` to ``p``."""
    g = p.add_argument_group("chunked rendering on Ray (pip install 'vsdloral[cluster]')")
    g.add_argument("--workers", type=int, metavar="N",
                   help="render in chunks on a local Ray instance with N workers (with --ray: at most N chunks "
                        "at a time)")
    g.add_argument("--devices", metavar="LIST",
                   help="GPUs for the local workers, e.g. cuda:0,cuda:1 (default --workers: one per device)")
    g.add_argument("--ray", metavar="ADDRESS",
                   help="join a running Ray cluster (host:port, ray://host:port or auto); the input, the model and "
                        "the work folder must be on storage every node mounts at the same path")
    g.add_argument("--chunk-frames", type=int, metavar="K", help="frames per chunk (default: about a minute of video)")
    g.add_argument("--work-dir", metavar="DIR",
                   help="chunks and manifest (default: OUTPUT.vsdloral-work beside OUTPUT); rerunning the same "
                        "command resumes from it, and it is removed when OUTPUT is written")


def is_distributed(args: argparse.Namespace) -> bool:
    """True when the options ask for the chunked mode."""
    return any(getattr(args, k, None) is not None for k in ("workers", "devices", "ray", "chunk_frames", "work_dir"))
