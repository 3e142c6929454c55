"""``bta-core models``: list the bundled default model and models cached on this machine."""

from __future__ import annotations

import argparse
import json

from ..calibration import collection_threshold
from ..models_catalog import list_models, models_dir


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, add_help=add_help)
    p.add_argument(
        "--dir", action="append", default=[], help="also list checkpoints in this folder"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    for folder in args.dir:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: --dir must be an existing folder")
    models = list_models(args.dir)
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    if not models:
        print(f"no models found (bundled model missing; cache folder {models_dir()})")
        return 1
    for m in models:
        if "error" in m:
            print(f"{m['name']:<20} {m['origin']:<8} unreadable: {m['error']}")
            continue
        metrics = ", ".join(
            f"{k} {v}" for k, v in (m["metrics"] or {}).items() if not isinstance(v, dict)
        )
        coll = collection_threshold(m["calibration"])
        coll_text = "" if coll is None else f", collection threshold {coll:.3f}"
        print(
            f"{m['name']:<20} {m['origin']:<8} {m['backbone']} {m['image_size']}px, "
            f"{m['mode']}/{m['views']}, threshold {m['threshold']:.3f}{coll_text}, "
            f"{m['size_mb']} MB\n"
            f"{'':<29}{m['path']}" + (f"\n{'':<29}{metrics}" if metrics else "")
        )
    return 0
