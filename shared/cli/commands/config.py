"""`unikd config show [--config F] [--set k=v]`: every key with its type, default and value."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from typing import Any, Literal

from shared.config import RunConfig, resolve_config


def type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "|".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp))


def rows(cls: type, resolved: Any, prefix: str = "",
         sources: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per leaf key: dotted key, type, default, resolved value, range, and where the
    value came from (`source`: "default", the config file or "--set")."""
    out: list[dict[str, Any]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = getattr(resolved, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out += rows(hints[f.name], value, f"{prefix}{f.name}.", sources)
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        lo, hi = f.metadata.get("range", (None, None))
        out.append({"key": prefix + f.name, "type": type_name(hints[f.name]), "default": default,
                    "value": value, "range": [lo, hi] if (lo, hi) != (None, None) else None,
                    "path": bool(f.metadata.get("path")),
                    "source": (sources or {}).get(prefix + f.name, "default")})
    return out


def show(args: argparse.Namespace) -> int:
    res = resolve_config(args.config, args.set)
    table = rows(RunConfig, res.config, sources=res.sources)
    if args.json:
        print(json.dumps(table, indent=2, default=str))
        return 0
    width = max(len(r["key"]) for r in table)
    kind = min(max(len(r["type"]) for r in table), 22)  # long choice lists just overflow
    print(f"{'key':<{width}}  {'type':<{kind}}  {'default':<12}  value")
    for r in table:
        mark = "" if r["value"] == r["default"] else f"  * ({label(r['source'])})"
        print(f"{r['key']:<{width}}  {r['type']:<{kind}}  {str(r['default']):<12}  "
              f"{r['value']}{mark}")
    sources = [s for s in (args.config, "--set" if args.set else None) if s]
    print("\n* differs from the default" + (f" (set by {' and '.join(sources)})" if sources
                                           else ""))
    return 0


def label(source: str) -> str:
    """A row's source in the text table: --set or file (default: a preset's doing)."""
    return {"--set": "--set", "default": "preset"}.get(source, "file")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="show every config key: type, default, resolved value")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    s = csub.add_parser("show", help="every key with its type, default and resolved value")
    s.add_argument("--config", help="a YAML run config (default: the built-in defaults)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--json", action="store_true", help="machine-readable rows")
    s.set_defaults(func=show)
