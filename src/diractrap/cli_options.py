"""Command-line options generated from a parameter dataclass or a function's keyword arguments (for :mod:`.cli`).

:func:`add_options_from` adds one ``--field-name`` option per field, with the type, default and help the source
declares, so that the command line follows the library instead of a copy of it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import re
import sys
import textwrap
import tokenize
import types
import typing

__all__ = ["add_options_from", "add_alias", "NONE", "parse_bool"]


class _Null:
    """What ``none`` on the command line gives an optional field: unlike None, which means "not given"."""

    def __repr__(self) -> str:
        return "none"


NONE = _Null()


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _or_none(kind):
    """``kind`` that also reads ``none`` (as :data:`NONE`), for a field annotated ``X | None``."""

    def parse(text: str):
        return NONE if text.lower() == "none" else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")  # argparse's "invalid float value" names the base type
    return parse


def _argument_kind(annotation) -> dict:
    """add_argument's type (and nargs, choices) for a value annotated ``annotation``."""
    origin, targs = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in targs if a is not type(None)]
        if len(rest) != 1 or len(targs) != 2:
            raise TypeError(f"no command-line option for a field of type {annotation!r}")
        spec = _argument_kind(rest[0])
        spec["type"] = _or_none(spec["type"])
        if "choices" in spec:
            spec["choices"] = [*spec["choices"], NONE]
        return spec
    if origin is typing.Literal:
        return {"type": type(targs[0]), "choices": list(targs)}
    if origin in (tuple, list):
        fixed = origin is tuple and targs and targs[-1] is not Ellipsis
        return {**_argument_kind(targs[0] if targs else str), "nargs": len(targs) if fixed else "+"}
    if annotation is bool:
        return {"type": parse_bool}
    if annotation in (int, float, str):
        return {"type": annotation}
    raise TypeError(f"no command-line option for a field of type {annotation!r}")


def _fields_of(source) -> list[tuple[str, object, object, dict]]:
    """(name, annotation, default, metadata) of each field of a dataclass, or of each keyword argument with a
    default of a function (its annotation, or the default's type where there is none or it cannot be evaluated)."""
    if dataclasses.is_dataclass(source):
        hints = typing.get_type_hints(source)
        rows = []
        for f in dataclasses.fields(source):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            rows.append((f.name, hints[f.name], default, dict(f.metadata)))
        return rows
    try:
        params = inspect.signature(source, eval_str=True).parameters.values()
    except (NameError, AttributeError, TypeError, SyntaxError):  # e.g. a name imported for type checkers only
        params = inspect.signature(source).parameters.values()
    return [(q.name, q.annotation if q.annotation is not q.empty and not isinstance(q.annotation, str)
             else type(q.default), q.default, {}) for q in params if q.default is not q.empty]


def _tidy(text: str) -> str:
    text = re.sub(r":\w+:`~?([^`]*)`", r"\1", text.replace("``", ""))  # Sphinx roles read as plain names
    return " ".join(text.split()).strip(".")


def _line_comments(source) -> dict[str, str]:
    """name -> the comment that ends the line where the field (or keyword argument, with its default) is defined."""
    try:
        text = textwrap.dedent(inspect.getsource(source))
        tree = ast.parse(text).body[0]
    except (OSError, TypeError, SyntaxError):  # no source (e.g. a frozen install): help falls back to the name
        return {}
    comments = {t.start[0]: t.string.lstrip("#") for t in tokenize.generate_tokens(io.StringIO(text).readline)
                if t.type == tokenize.COMMENT}
    ends = {}
    if isinstance(tree, ast.ClassDef):
        ends = {n.target.id: n.end_lineno for n in tree.body if isinstance(n, ast.AnnAssign)
                and isinstance(n.target, ast.Name)}
    elif isinstance(tree, (ast.FunctionDef, ast.AsyncFunctionDef)):
        a = tree.args
        positional = [*a.posonlyargs, *a.args]
        defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
        ends = {arg.arg: (d or arg).end_lineno for arg, d in [*zip(positional, defaults), *zip(a.kwonlyargs,
                                                                                              a.kw_defaults)]}
    return {name: " ".join(comments[line].split()).strip(".").strip() for name, line in ends.items()
            if line in comments}  # each field's own comment: one text per option


def _docstring_entries(source) -> dict[str, str]:
    """name -> the first sentence of its entry ``name[, name]: text`` in the docstring of ``source``."""
    entries, names = {}, []
    for line in (inspect.getdoc(source) or "").splitlines():
        head, sep, rest = line.partition(":")
        keys = [k.strip() for k in head.split(",")]
        if sep and rest.strip() and not line[:1].isspace() and all(k.isidentifier() for k in keys):
            names = keys
            for k in names:
                entries[k] = rest.strip()
        elif names and line[:1].isspace() and line.strip():  # the entry goes on
            for k in names:
                entries[k] += " " + line.strip()
        else:
            names = []
    return {k: _tidy(v.split(". ")[0]) for k, v in entries.items()}


def add_options_from(parser, source, *, dest=str.lower, defaults: bool = True, include=None, exclude=(),
                     choices: dict | None = None, aliases: dict | None = None, notes: dict | None = None) -> dict:
    """Add one ``--field-name`` option per field of the dataclass ``source`` (or per keyword argument with a
    default of the function ``source``) to ``parser``; return {field: dest}.

    The value follows the annotation: int, float, str, bool (true/false), Literal (its values as choices), a tuple
    of n items (n values) or of any length and list (one or more values), ``X | None`` (also ``none``, parsed as
    :data:`NONE`). ``choices`` adds choices for str fields validated elsewhere. The help is the field's
    ``metadata["help"]``, else its entry ``name: text`` in the docstring, else the comment ending its line, else
    its name; ``notes`` adds text for the command line. ``defaults``: the option's default is the field's (shown),
    or None for "not given" where the caller fills values in (deblur: from a preset). ``aliases``: field -> old
    spellings, accepted but hidden (:class:`_Deprecated`). ``include`` (an order) and ``exclude`` select fields.
    """
    fields = {row[0]: row for row in _fields_of(source)}
    names = [n for n in (fields if include is None else include) if n not in exclude]
    comments, entries = _line_comments(source), _docstring_entries(source)
    made = {}
    for name in names:
        _, annotation, default, metadata = fields[name]
        spec = _argument_kind(annotation)
        if choices and name in choices:
            spec["choices"] = list(choices[name])
        text = metadata.get("help") or "; ".join(filter(None, [entries.get(name), comments.get(name)]))
        text = text or name.replace("_", " ")
        if text.startswith("or ") and isinstance(default, str):  # "# or 'b'" after a default 'a'
            text = f'"{default}" {text}'
        extra = ["or none"] if typing.get_origin(annotation) in (typing.Union, types.UnionType) else []
        extra += [notes[name]] if notes and name in notes else []
        extra += ["default: %(default)s"] if defaults else []
        text = text.replace("%", "%%") + (f" ({'; '.join(extra)})" if extra else "")
        option = f"--{name.lower().replace('_', '-')}"
        action = parser.add_argument(option, dest=dest(name), default=default if defaults else None,
                                     metavar=None if "choices" in spec else name.upper(), help=text, **spec)
        for old in (aliases or {}).get(name, ()):
            add_alias(parser, action, old)
        made[name] = action.dest
    return made


class _Deprecated(argparse.Action):
    """A hidden old spelling of an option: stores into the option's dest and says which name replaces it."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: note: {option_string} is a deprecated spelling of {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_alias(parser, action, *old: str) -> None:
    """Accept the option spellings ``old`` for ``action`` without listing them in the help."""
    parser.add_argument(*old, dest=action.dest, action=_Deprecated, new=action.option_strings[0], type=action.type,
                        nargs=action.nargs, choices=action.choices, metavar=action.metavar,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)
