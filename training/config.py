"""Training configuration: a preset YAML, an optional user YAML, then ``--set key=value`` overrides.

Configs are plain nested dicts; dotted keys (``loss.l2``) address nested entries.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"


def preset_path(name: str) -> Path:
    """Path of a bundled preset config (``tiny``, ``lite``, ``sd21``)."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.is_file():
        choices = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise ValueError(f"unknown training preset {name!r}; choose one of {choices}")
    return path


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping (empty file -> ``{}``)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except OSError as exc:
        raise ValueError(f"cannot read config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config {path} must be a mapping at the top level")
    return data


def load_preset(name: str, _seen: tuple[str, ...] = ()) -> dict:
    """A bundled preset config; one whose YAML says ``extends: OTHER`` is merged over OTHER's
    (so a variant preset lists only what it changes)."""
    if name in _seen:
        raise ValueError(f"training preset {name!r} extends itself ({' -> '.join(_seen + (name,))})")
    cfg = load_yaml(preset_path(name))
    parent = cfg.pop("extends", None)
    return merge(load_preset(str(parent), _seen + (name,)), cfg) if parent else cfg


def merge(base: dict, over: dict) -> dict:
    """Recursively merge ``over`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    """``set_dotted(cfg, "loss.l2", 1.0)`` creates intermediate mappings as needed."""
    parts = key.split(".")
    node = cfg
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def get_dotted(cfg: dict, key: str, default: Any = None) -> Any:
    node: Any = cfg
    for p in key.split("."):
        if not isinstance(node, dict) or p not in node:
            return default
        node = node[p]
    return node


def parse_override(text: str) -> tuple[str, Any]:
    """``"loss.l2=0.5"`` -> ``("loss.l2", 0.5)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ValueError(f"--set expects key=value, got {text!r}")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def build_config(preset: str | None, config_file: str | None, overrides: list[str] | None,
                 explicit: dict[str, Any] | None = None) -> dict:
    """Preset YAML < user YAML < ``--set`` overrides < explicit flags (non-``None`` values)."""
    user = load_yaml(config_file) if config_file else {}
    name = preset or user.get("preset") or "tiny"
    cfg = merge(load_preset(name), user)
    cfg["preset"] = name
    for item in overrides or []:
        set_dotted(cfg, *parse_override(item))
    for k, v in (explicit or {}).items():
        if v is not None:
            set_dotted(cfg, k, v)
    return cfg


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
