"""Command-line flags generated from a pydantic options model, so no flag is restated.

Each field becomes ``--field-name`` with the field's type, its description as help and its
default shown there; argparse's own default is ``None`` so that a flag not given leaves the
model's default in force (one source for every default).  A bool field that defaults to True
becomes ``--no-field-name``; any other bool a plain switch.  Each value is parsed by the field's
own pydantic validator, constraints included (``ge=0`` and the like): a bad value is an argparse
usage error naming the flag (exit status 2), as a malformed number always was.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

__all__ = ["add_options", "field_parser", "flag_name", "options_from_args"]

Model = TypeVar("Model", bound=BaseModel)
#: Namespace attribute listing the fields :func:`add_options` made flags of: only those are read
#: back (the namespace holds other names too, e.g. ``command``, the subcommand's own name).
_FIELDS = "_option_fields"
_SCALARS: tuple[type, ...] = (str, int, float, Path)


def flag_name(field: str, info: FieldInfo) -> str:
    """``batch_size`` -> ``--batch-size``; a bool that defaults to True -> ``--no-...``."""
    negated = _scalar_type(field, info) is bool and info.default is True
    return f"--{'no-' if negated else ''}{field.replace('_', '-')}"


def _scalar_type(field: str, info: FieldInfo) -> type:
    """The field's type with ``None`` removed from an optional; only plain scalars are
    supported (a list or a union of two types has no single obvious flag)."""
    annotation = info.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            annotation = members[0]
    if annotation is bool or annotation in _SCALARS:
        return annotation
    raise TypeError(f"{field}: no command-line flag for a field of type {info.annotation!r}")


def field_parser(name: str, info: FieldInfo) -> Callable[[str], object]:
    """An argparse ``type``: the text validated as the field would validate it (type and
    constraints), a failure reported as the field's own message."""
    kind = _scalar_type(name, info)
    adapter = TypeAdapter(Annotated[kind, *info.metadata] if info.metadata else kind)

    def parse(text: str) -> object:
        try:
            return adapter.validate_python(text)
        except ValidationError as error:
            raise argparse.ArgumentTypeError(
                f"{text!r}: {error.errors()[0]['msg'].lower()}"
            ) from error

    parse.__name__ = name  # argparse names the type in some messages
    return parse


def add_options(
    parser: argparse.ArgumentParser, model: type[BaseModel], exclude: Iterable[str] = ()
) -> None:
    """Add one flag per field of ``model`` (but ``exclude``) to ``parser``.

    The field's description is required: an undocumented option is a bug in the model, not
    something to hide here.
    """
    skipped = set(exclude)
    added = tuple(name for name in model.model_fields if name not in skipped)
    parser.set_defaults(**{_FIELDS: added})
    for name in added:
        info = model.model_fields[name]
        if not info.description:
            raise ValueError(f"{model.__name__}.{name} has no description for its --help")
        kind = _scalar_type(name, info)
        required = info.is_required()
        help_text = info.description
        if kind is bool and info.default is True:
            help_text = f"turn off (on by default): {help_text}"
        elif not required and info.default is not None and kind is not bool:
            help_text += f" (default: {info.default})"
        flag = flag_name(name, info)
        if kind is bool:
            action = "store_false" if info.default is True else "store_true"
            parser.add_argument(flag, dest=name, action=action, default=None, help=help_text)
        else:
            parser.add_argument(
                flag,
                dest=name,
                type=field_parser(name, info),
                required=required,
                default=None,
                help=help_text,
            )


def options_from_args(model: type[Model], args: argparse.Namespace, **fixed: object) -> Model:
    """The model from the flags :func:`add_options` added that were given, plus ``fixed`` values
    (fields the command line does not set); a cross-field violation raises pydantic's
    ``ValidationError`` (a ``ValueError``: the CLI reports it as a usage error)."""
    given = {
        name: getattr(args, name)
        for name in getattr(args, _FIELDS)
        if getattr(args, name) is not None
    }
    return model(**given, **fixed)
