"""Comparing nested settings dicts (resumed training configs, render job manifests)."""

from __future__ import annotations


def changed_keys(old: dict, new: dict, *, values: bool = False, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between ``old`` and ``new``, recursing into nested dicts,
    sorted; ``values=True`` appends ``old -> new`` (reprs) to each key."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, values=values, prefix=f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} {a!r} -> {b!r}" if values else f"{prefix}{k}")
    return out
