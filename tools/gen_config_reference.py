"""Generate docs/CONFIG.md, the configuration reference, from the dataclasses in megakd/config.py.

  python tools/gen_config_reference.py            # rewrite docs/CONFIG.md
  python tools/gen_config_reference.py --check    # exit 1 if docs/CONFIG.md is stale (CI)

Every dataclass that no other dataclass uses as a field type is a root (today: Config); each
dataclass field of a root is a section, listed with its keys' types, defaults and the docstring
literal that follows each field in the source. New sections and fields appear automatically.
"""

import argparse
import dataclasses
import importlib
import inspect
import json
import os
import sys
import types
import typing
from typing import Dict, List, Literal, Union

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from megakd.errors import cli_main  # noqa: E402
from megakd.toolargs import field_docs  # noqa: E402

DEFAULT_OUTPUT = os.path.join(REPO, "docs", "CONFIG.md")
_NO_DEFAULT = object()


def type_name(tp) -> str:
    """A reader's name for a field type: `int or null`, `"llama" | "gpt2"`, `list of str`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(json.dumps(a) for a in args)
    if origin in (Union, types.UnionType):
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names + (["null"] if type(None) in args else []))
    if origin in (list, List):
        if not args:
            return "list"
        item = type_name(args[0])
        return f"list of ({item})" if " " in item else f"list of {item}"
    if origin in (dict, Dict):
        return f"mapping of {type_name(args[0])} to {type_name(args[1])}" if args else "mapping"
    if dataclasses.is_dataclass(tp):
        return f"section `{tp.__name__}`"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def default_value(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _NO_DEFAULT


def render_default(value) -> str:
    if value is _NO_DEFAULT:
        return "*required*"
    if dataclasses.is_dataclass(value):
        return ""
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _roots(module) -> list:
    classes = [c for _, c in inspect.getmembers(module, inspect.isclass)
               if dataclasses.is_dataclass(c) and c.__module__ == module.__name__]
    used = set()
    for cls in classes:
        for tp in typing.get_type_hints(cls).values():
            if dataclasses.is_dataclass(tp):
                used.add(tp)
    roots = [c for c in classes if c not in used]
    return sorted(roots, key=lambda c: inspect.getsourcelines(c)[1])


def _section_rows(cls, prefix: str, out: List[str]):
    """Rows for cls's plain fields; nested dataclass fields become their own tables after it."""
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    nested = []
    rows = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            nested.append((hints[f.name], f"{prefix}{f.name}"))
            continue
        rows.append(f"| `{prefix}{f.name}` | {_cell(type_name(hints[f.name]))} | "
                    f"{_cell(render_default(default_value(f)))} | {_cell(docs.get(f.name, ''))} |")
    if rows:
        out += ["| key | type | default | description |", "|---|---|---|---|", *rows, ""]
    for sub, name in nested:
        out += [f"## `{name}`", ""]
        if sub.__doc__ and not sub.__doc__.startswith(f"{sub.__name__}("):
            out += [inspect.cleandoc(sub.__doc__), ""]
        _section_rows(sub, f"{name}.", out)


def render(module_name: str = "megakd.config") -> str:
    """The Markdown reference for every root dataclass in module_name."""
    module = importlib.import_module(module_name)
    path = os.path.relpath(inspect.getsourcefile(module), REPO)
    out = ["# Configuration reference", "",
           f"Generated from the dataclasses in `{path}` by `python tools/gen_config_reference.py`;",
           "do not edit by hand (`--check` fails when this file is stale).", "",
           "Set a key in the YAML file given with `--config` (`section:` then `key: value`) or on",
           "the command line as `section.key=value` (the value is read as YAML: `null`, `true`,",
           "`3e-4`, `[a, b]`). Unknown keys are errors.", ""]
    roots = _roots(module)
    for root in roots:
        if len(roots) > 1:
            out += [f"# `{root.__name__}`", ""]
        _section_rows(root, "", out)
    return "\n".join(out).rstrip() + "\n"


@cli_main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if the output file is stale")
    p.add_argument("--output", default=DEFAULT_OUTPUT, help="default: docs/CONFIG.md")
    p.add_argument("--module", default="megakd.config", help="module holding the dataclasses")
    args = p.parse_args(argv)
    text = render(args.module)
    if args.check:
        current = open(args.output).read() if os.path.isfile(args.output) else None
        if current != text:
            print(f"{os.path.relpath(args.output)} is stale: run "
                  f"python tools/gen_config_reference.py", file=sys.stderr)
            sys.exit(1)
        print(f"{os.path.relpath(args.output)} is up to date")
        return
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(args.output)}")


if __name__ == "__main__":
    main()
