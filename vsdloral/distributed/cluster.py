"""Starting or joining Ray, and checking that every node can do the job.

A local instance (``--workers``) listens on 127.0.0.1 only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``
makes Ray use the loopback address for every listener; on Linux it otherwise binds the machine's
address) with token authentication on, a fresh random token per run kept in the environment of the
driver and its children (nothing written to ~/.ray). ``--ray ADDRESS`` joins a running cluster with
the user's own Ray settings; the address is probed first, so an unreachable one fails within
:data:`CONNECT_TIMEOUT` seconds.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import threading
from pathlib import Path

from .errors import DistributedError
from .reaper import start_reaper

CONNECT_TIMEOUT = 10.0
EXTRA_HINT = "pip install 'vsdloral[cluster]'"
_REAPER = None  # the local run's reaper (vsdloral.distributed.reaper), kept alive with the driver


def require_ray() -> None:
    """Fail early (before anything is written) when Ray is not installed, without importing it."""
    import importlib.util

    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise DistributedError(f"--workers/--ray need Ray, which is not installed: {EXTRA_HINT}")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise DistributedError(f"--workers/--ray need Ray, which is not installed: {EXTRA_HINT}") from None
    return ray


def local_environment(gpu_ids: list[str] | None) -> dict[str, str]:
    """The environment variables a loopback-only, token-authenticated local instance needs."""
    env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    if gpu_ids is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_ids)
    return env


def _venv_path() -> str:
    # VapourSynth's first-run configuration runs the `vapoursynth` tool found on PATH
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def start_local(workers: int, gpu_ids: list[str] | None):
    """Start a local Ray instance with ``workers`` CPU slots (and the GPUs ``gpu_ids``, physical ids);
    returns the ``ray`` module. Must run before anything else imports ``ray`` (the loopback switch is
    read at import)."""
    os.environ.update(local_environment(gpu_ids))
    os.environ["PATH"] = _venv_path()
    ray = _import_ray()
    global _REAPER
    _REAPER = start_reaper()  # Ray's agents would outlive a driver killed with SIGKILL
    # address="local": always a new instance of our own, never a cluster `ray start` left running here
    ray.init(address="local", num_cpus=workers, num_gpus=len(gpu_ids) if gpu_ids else 0, include_dashboard=False,
             object_store_memory=96 * 1024 * 1024, logging_level=logging.ERROR, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    if address == "auto":
        return None
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise DistributedError(f"--ray: {address!r} is not host:port, ray://host:port or auto")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _probe_address(address: str) -> None:
    hp = _host_port(address)
    if hp is None:
        return
    host, port = hp
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise DistributedError(f"--ray: cannot reach a Ray cluster at {address} within {CONNECT_TIMEOUT:g} s "
                               f"({exc.strerror or exc}); is `ray start --head` running there?") from None


def join(address: str):
    """Connect to the cluster at ``address``; returns the ``ray`` module. Raises :class:`DistributedError`
    when it cannot be reached or answered within :data:`CONNECT_TIMEOUT` (+ Ray's handshake)."""
    hp = _host_port(address)
    if hp is not None and _is_loopback(hp[0]):
        # a cluster on this machine's loopback: without this Ray would dial the machine's address
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = _import_ray()
    _probe_address(address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    result: dict = {}

    def connect() -> None:
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
            result["ok"] = True
        except Exception as exc:  # noqa: BLE001 - reported as one line below
            result["error"] = exc

    t = threading.Thread(target=connect, daemon=True)
    t.start()
    t.join(CONNECT_TIMEOUT * 6)
    if t.is_alive():
        raise DistributedError(f"--ray: {address} accepted a connection but no Ray cluster answered within "
                               f"{CONNECT_TIMEOUT * 6:g} s")
    if "error" in result:
        exc = result["error"]
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DistributedError(f"--ray: cannot join the cluster at {address}: {first}")
    return ray


def node_problems(ray, files: dict[str, tuple[str, int]], probe: tuple[str, str], version: str) -> list[str]:
    """Run :func:`check_node` on every alive node; returns one line per problem, naming the node."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    check = ray.remote(check_node)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [check.options(num_cpus=0, max_retries=0,
                          scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(files, probe, version) for n in nodes]
    problems = []
    for node, ref in zip(nodes, refs):
        where = node.get("NodeManagerAddress", node["NodeID"][:8])
        try:
            problems += [f"node {where}: {p}" for p in ray.get(ref, timeout=120)]
        except Exception as exc:  # noqa: BLE001
            problems.append(f"node {where}: the check did not run ({type(exc).__name__})")
    return problems


def node_runtimes(ray) -> dict[str, dict]:
    """:func:`~vsdloral.distributed.runtime.runtime_identity` of every alive node, by node address.
    Raises :class:`DistributedError` when a node cannot answer."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .runtime import runtime_identity

    probe = ray.remote(runtime_identity)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [probe.options(num_cpus=0, max_retries=0,
                          scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in nodes]
    out = {}
    for node, ref in zip(nodes, refs):
        where = node.get("NodeManagerAddress") or node["NodeID"][:8]
        if where in out:
            where = f"{where} ({node['NodeID'][:8]})"
        try:
            out[where] = ray.get(ref, timeout=120)
        except Exception as exc:  # noqa: BLE001 - one line below
            raise DistributedError(f"node {where} could not report its vsdloral/torch/ffmpeg versions "
                                   f"({type(exc).__name__}); is vsdloral installed there?") from None
    return out


def check_node(files: dict[str, tuple[str, int]], probe: tuple[str, str], version: str) -> list[str]:
    """On one node: the files exist with the driver's sizes, the work folder holds the driver's
    probe and is writable, vsdloral has the driver's version, ffmpeg and ffprobe are on PATH."""
    import shutil

    problems = []
    for what, (path, size) in files.items():
        p = Path(path)
        if not p.is_file():
            problems.append(f"cannot see the {what} {path}")
        elif p.stat().st_size != size:
            problems.append(f"the {what} {path} has {p.stat().st_size} bytes, the driver's has {size}")
    probe_path, token = probe
    try:
        if Path(probe_path).read_text() != token:
            problems.append(f"the work folder {Path(probe_path).parent} is another folder than the driver's")
        test = Path(probe_path).with_name(f".write-test-{socket.gethostname()}-{os.getpid()}")
        test.write_text("ok")
        test.unlink()
    except OSError as exc:
        problems.append(f"cannot use the work folder {Path(probe_path).parent} ({exc.strerror or exc})")
    try:
        import vsdloral

        if vsdloral.__version__ != version:
            problems.append(f"vsdloral {vsdloral.__version__} is installed, the driver runs {version}")
    except ImportError:
        problems.append("vsdloral is not installed")
    for tool in ("ffmpeg", "ffprobe"):
        if not shutil.which(tool):
            problems.append(f"{tool} is not on PATH")
    return problems
