"""``vsdloral info FILE``: print a weights file's metadata as JSON on stdout."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("info", help="print a weights file's metadata as JSON")
    p.add_argument("file", help="a vsdloral .safetensors weights file")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..model.weights import read_metadata

    print(json.dumps(read_metadata(args.file), indent=2, sort_keys=True))
    return 0
