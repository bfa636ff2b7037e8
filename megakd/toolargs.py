"""Command-line arguments of the tools as typed dataclasses: one way to declare, parse and validate.

A tool's settings (the dump's, MiniPLM scoring's and selection's) are a dataclass deriving `ToolArgs`,
each field followed by its docstring, as in `megakd.config`. `ToolArgs.parse(argv)` builds the argparse
flags from the fields (`--field-name`; a field without a default is required; Literal -> choices;
list -> one or more values; a bool that defaults to True -> `--no-field-name`), then constructs the
dataclass and runs its `validate()`, whose `ConfigError`s name the flags. Library callers build the
dataclass directly and call `validate()` themselves (or through the function they call).
"""

import argparse
import ast
import collections.abc
import dataclasses
import inspect
import typing
from typing import Dict, List, Literal, Optional, Union


def field_docs(cls) -> Dict[str, str]:
    """{field name: the string literal right after its annotation} of a dataclass, from its source
    (its bases' too, base first)."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        body = ast.parse(inspect.getsource(klass).lstrip()).body[0].body
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _plain(tp):
    """Optional[X] -> X."""
    if typing.get_origin(tp) is Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


@dataclasses.dataclass
class ToolArgs:
    """Base of a tool's settings; subclasses add fields (with docstrings) and `validate`."""

    def validate(self) -> None:
        """One-line megakd.errors.ConfigError naming the flag to change (subclasses' rules)."""

    @classmethod
    def parser(cls, description: Optional[str] = None) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(description=description,
                                    formatter_class=argparse.RawTextHelpFormatter)
        hints, docs = typing.get_type_hints(cls), field_docs(cls)
        for f in dataclasses.fields(cls):
            tp, help_ = _plain(hints[f.name]), docs.get(f.name, "").replace("%", "%%")
            has_default = f.default is not dataclasses.MISSING
            if tp is bool:
                if has_default and f.default:
                    p.add_argument(flag("no_" + f.name), dest=f.name, action="store_false",
                                   help=f"turn off: {help_}")
                else:
                    p.add_argument(flag(f.name), action="store_true", help=help_)
                continue
            kw = {"help": help_, "dest": f.name}
            origin = typing.get_origin(tp)
            if origin is Literal:
                kw["choices"] = list(typing.get_args(tp))
            elif origin in (list, List, collections.abc.Sequence):
                kw["nargs"] = "+"
                kw["type"] = typing.get_args(tp)[0]
            else:
                kw["type"] = tp
            if has_default:
                kw["default"] = f.default
                if f.default is not None:
                    kw["help"] = f"{help_} (default: {f.default})"
            else:
                kw["required"] = True
            p.add_argument(flag(f.name), **kw)
        return p

    @classmethod
    def parse(cls, argv=None, description: Optional[str] = None):
        """The settings from a command line, validated (a ConfigError names the flag)."""
        args = cls(**vars(cls.parser(description).parse_args(argv)))
        args.validate()
        return args
