"""`prcl configs show | keys`: the resolved config as YAML, and the reference of every key.

`show` prints what `prcl train` would run with (defaults, method presets, the YAML file with its `_base_`
chain, the overrides), in a form `prcl train -c` reads back unchanged. `keys` prints `reference.py`'s
reference for a section or all, as text or as the markdown of `docs/configuration.md`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from prcl.config.loading import config_yaml, load_config
from prcl.config.reference import render_markdown, render_text, sections, select


def run_show(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    given = " ".join(shlex.quote(a) for a in (["-c", args.config] if args.config else []) + list(args.overrides))
    sys.stdout.write(f"# prcl configs show {given}".rstrip() + "\n"
                     "# resolved: defaults <- method presets <- YAML files <- overrides\n" + config_yaml(cfg))
    return 0


def run_keys(args: argparse.Namespace) -> int:
    docs = select(sections(), args.section or "")
    sys.stdout.write(render_markdown(docs) if args.markdown else render_text(docs))
    return 0


def add_config_commands(sub: Any) -> None:
    """Add `show` and `keys` to the sub-parsers of `prcl configs`."""
    p = sub.add_parser("show", help="print the resolved config as YAML (what `prcl train` with the same "
                                    "arguments would run)")
    p.add_argument("-c", "--config", help="YAML config (default: the built-in defaults)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. method.name=classmix")
    p.set_defaults(func=run_show)
    p = sub.add_parser("keys", help="list every config key with its type, default and meaning")
    p.add_argument("section", nargs="?", help="only the keys under this section or key, e.g. method.contrastive")
    p.add_argument("--markdown", action="store_true", help="as the markdown of docs/configuration.md")
    p.set_defaults(func=run_keys)
