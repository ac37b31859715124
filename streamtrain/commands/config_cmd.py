"""``streamtrain config show``: print the resolved configuration, secrets masked."""

from __future__ import annotations

import argparse
import json
import sys

from streamtrain.config import Config, dump_config

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="inspect the resolved configuration")
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the resolved config (file → env → flags), secrets masked")
    show.add_argument("--format", choices=("json", "toml"), default="toml")
    show.set_defaults(handler=_show)


def _toml_line(key: str, value: object) -> str:
    # TOML has no null: an unset optional key is shown commented out.
    return f"# {key} = (unset)" if value is None else f"{key} = {json.dumps(value)}"


def _write_toml(tree: dict, prefix: str = "") -> list[str]:
    scalars = [_toml_line(key, v) for key, v in tree.items() if not isinstance(v, dict)]
    lines = ([f"[{prefix}]"] if prefix and scalars else []) + scalars
    for key, value in tree.items():
        if isinstance(value, dict):
            lines += ([""] if lines else []) + _write_toml(value, f"{prefix}.{key}" if prefix else key)
    return lines


def _show(args: argparse.Namespace, config: Config) -> int:
    tree = dump_config(config)
    if args.format == "json":
        sys.stdout.write(json.dumps(tree, indent=2) + "\n")
    else:
        sys.stdout.write("\n".join(_write_toml(tree)) + "\n")
    return 0
