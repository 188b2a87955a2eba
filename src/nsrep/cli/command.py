"""Registering a command: its arguments sit beside its code, and every default is written once.

A command is a documented function decorated with :func:`command`; each :func:`arg` names the argparse
flags and whatever argparse cannot know. The rest is filled in here, so nothing is said twice:

- the default comes from the function's signature, else from the signature of ``defaults`` (a library
  function the command passes its options to), or, for :func:`field_arg`, from a field of a library dataclass
  (``UnitConfig``, ``TrainConfig``, ``ProbeConfig``): such a parameter must have no default in the command;
- ``type`` (int or float, also for the items of a list) and the ``store_true`` action of a flag come from
  the annotation;
- ``{default}`` in a help text is replaced by the default (a list as its items separated by spaces).

The function's docstring is the command's description; its first line the summary in ``nsrep --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["COMMANDS", "Arg", "Command", "add_commands", "arg", "command", "field_arg"]

_EMPTY = inspect.Parameter.empty


@dataclass(frozen=True)
class Arg:
    """One argument of a command: argparse's flags and keywords, and where its default comes from."""

    flags: tuple[str, ...]
    options: dict[str, Any]
    config: type | None = None  # a dataclass whose field named like the dest gives the default and the type
    given_only: bool = False  # with ``config``: default None, the value counts only when given

    @property
    def dest(self) -> str:
        if "dest" in self.options:
            return self.options["dest"]
        long = next((f for f in self.flags if f.startswith("--")), self.flags[0])
        return long.lstrip("-").replace("-", "_")


def arg(*flags: str, **options: Any) -> Arg:
    """An argument: ``flags`` and keywords as for ``ArgumentParser.add_argument``, less what is derived."""
    return Arg(flags, options)


def field_arg(config: type, name: str, *, given_only: bool = False, **options: Any) -> Arg:
    """``--name`` passing dataclass field ``name`` of ``config`` through: its default and type are the field's.

    ``given_only``: the default is None instead, for options that override a value set elsewhere (a recipe).
    """
    if name not in {f.name for f in dataclasses.fields(config)}:
        raise TypeError(f"{config.__name__} has no field {name!r}")
    return Arg((f"--{name.replace('_', '-')}",), {"dest": name, **options}, config, given_only)


@dataclass
class Command:
    """A registered command: the function, its name on the command line and its arguments."""

    name: str
    function: Callable[..., None]
    args: tuple[Arg, ...]
    defaults: Callable[..., Any] | None = None
    resolved: list[tuple[tuple[str, ...], dict[str, Any]]] = field(default_factory=list)


COMMANDS: dict[str, Command] = {}  # every registered command by name


def command(*args: Arg, name: str | None = None, defaults: Callable[..., Any] | None = None):
    """Register the decorated function as the command ``name`` (default: the function's name).

    ``defaults``: a function the command passes its ``**options`` to, whose signature gives their defaults.
    """

    def register(function: Callable[..., None]) -> Callable[..., None]:
        cmd = Command(name or function.__name__, function, args, defaults)
        cmd.resolved = [(a.flags, _resolve(cmd, a)) for a in args]
        COMMANDS[cmd.name] = cmd
        return function

    return register


def add_commands(subparsers: argparse._SubParsersAction, names: Sequence[str]) -> None:
    """One subparser per command in ``names``, in that order."""
    for cmd in (COMMANDS[name] for name in names):
        doc = (cmd.function.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else ""
        # argparse %-formats help strings (not descriptions): "95% CI" in a docstring must not break --help
        parser = subparsers.add_parser(cmd.name, help=summary.replace("%", "%%"), description=doc)
        parser.set_defaults(_command=cmd.function)
        for flags, options in cmd.resolved:
            parser.add_argument(*flags, **options)


def _resolve(cmd: Command, a: Arg) -> dict[str, Any]:
    """The keywords for ``add_argument``: ``a``'s own plus the derived default, type, action and help."""
    options = dict(a.options)
    own = inspect.signature(cmd.function).parameters
    param = own.get(a.dest)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values())
    if param is None and not takes_any:
        raise TypeError(f"command {cmd.name!r}: {a.flags[0]} gives {a.dest!r}, which {cmd.function.__name__} lacks")
    if a.config is not None:
        if param is not None and param.default is not _EMPTY:
            raise TypeError(f"command {cmd.name!r}: {a.dest!r} has its default in {a.config.__name__}, not here")
        source, annotation = _field(a.config, a.dest)
        default = None if a.given_only else source
    else:
        default, annotation = _parameter(cmd, a.dest, param)
    positional = not a.flags[0].startswith("-")  # argparse gives it a value (``[]`` for nargs="*")
    if "default" not in options and default is not _EMPTY and not positional:
        options["default"] = list(default) if isinstance(default, tuple) else default
    _derive_type(options, annotation)
    if isinstance(options.get("help"), str) and "{default}" in options["help"]:
        options["help"] = options["help"].replace("{default}", _shown(options.get("default")))
    return options


def _parameter(cmd: Command, dest: str, param: inspect.Parameter | None) -> tuple[Any, Any]:
    """Default and annotation of ``dest`` from the command's signature, else from its ``defaults`` function."""
    function = cmd.function
    if (param is None or param.default is _EMPTY) and cmd.defaults is not None:
        given = inspect.signature(cmd.defaults).parameters.get(dest)
        if given is not None and given.default is not _EMPTY:
            function, param = cmd.defaults, given
    if param is None:
        return _EMPTY, None
    return param.default, typing.get_type_hints(function).get(dest)


def _field(config: type, name: str) -> tuple[Any, Any]:
    f = next(f for f in dataclasses.fields(config) if f.name == name)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    return default, typing.get_type_hints(config)[name]


def _derive_type(options: dict[str, Any], annotation: Any) -> None:
    """``type`` or a flag action from the annotation, unless given: ``int``, ``float``, ``bool``, lists of them."""
    if annotation is None or options.get("action", "store") not in ("store", "append"):
        return
    base = _unwrap(annotation)
    if base is bool:
        if "action" not in options and "nargs" not in options:
            if options.get("default") is True:  # a flag named like the option cannot turn it off
                raise TypeError(f"bool option {options.get('dest', '')!r} defaults to True: give its action")
            options["action"] = "store_true"
        return
    if typing.get_origin(base) in (list, tuple, Sequence):
        item_types = typing.get_args(base)
        base = _unwrap(item_types[0]) if item_types else None
    if base in (int, float) and "type" not in options:
        options["type"] = base


def _unwrap(annotation: Any) -> Any:
    """``X | None`` -> ``X``; anything else unchanged."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [t for t in typing.get_args(annotation) if t is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _shown(default: Any) -> str:
    return " ".join(map(str, default)) if isinstance(default, list | tuple) else str(default)
