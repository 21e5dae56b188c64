"""The registered lines: each name maps to the package that holds the whole line, ``pipelines/lines/<name>/``.

A line package holds:

- ``handler.py``: ``Handler``, the :class:`pipelines.handler.Handler` its model replicas host;
- ``cli.py``: ``COMMANDS``, a :class:`Command` per verb it provides (``synth``, ``train``, ``eval``, ``run``,
  ``demo``), which ``fusionline VERB LINE`` runs; imported to build the parser, so it imports nothing heavy
  at module level;
- the rest of the line: ``compose.py`` (its graph), synthesis, training, evaluation.

Adding a line is adding a folder and one entry to :data:`LINES`.

Example:
    >>> line_names()
    ['factory', 'medical', 'service']
    >>> handler_class("factory").from_pretrained("runs/model")
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.handler import Handler

#: Line name -> its package.
LINES: dict[str, str] = {
    "factory": "pipelines.lines.factory",
    "medical": "pipelines.lines.medical",
    "service": "pipelines.lines.service",
}

#: Line name -> the model folder it ships (trained by the line's own ``train`` verb; a line may ship none).
SHIPPED_MODELS: dict[str, Path] = {
    "factory": Path(__file__).resolve().parents[2] / "tests" / "data" / "models" / "factory-v7",
    "medical": Path(__file__).resolve().parents[2] / "tests" / "data" / "models" / "medical-v3",
    "service": Path(__file__).resolve().parents[2] / "tests" / "data" / "models" / "service-v2",
}


@dataclass(frozen=True)
class Command:
    """One verb of a line's command line, ``fusionline VERB LINE [flags]``.

    Attributes:
        help: one line for ``fusionline VERB --help``.
        add_flags: adds the verb's flags (each with its help) to the line's parser.
        run: runs the parsed arguments; returns the exit status (None: 0).
    """

    help: str
    add_flags: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


class UnknownLine(ValueError):
    """A line name that is not registered; the message lists the registered ones."""

    def __init__(self, name: str):
        super().__init__(f"unknown line {name!r}; registered lines: {', '.join(LINES)}")


def line_names() -> list[str]:
    """The registered lines, in registration order."""
    return list(LINES)


def _module(name: str, part: str) -> ModuleType:
    if name not in LINES:
        raise UnknownLine(name)
    return importlib.import_module(f"{LINES[name]}.{part}")


def handler_class(name: str) -> type[Handler]:
    """The ``Handler`` class of line ``name``."""
    return _module(name, "handler").Handler


def commands(name: str) -> dict[str, Command]:
    """Line ``name``'s verbs: ``{"synth": Command, ...}``."""
    return _module(name, "cli").COMMANDS


def shipped_model(name: str) -> Path:
    """The model folder line ``name`` ships; ValueError when it ships none (name a ``--model`` then)."""
    if name not in LINES:
        raise UnknownLine(name)
    path = SHIPPED_MODELS.get(name)
    if path is None or not (path / "config.json").is_file():
        raise ValueError(f"line {name!r} ships no model here: name one with --model")
    return path


def serving(model_dir: str | Path) -> str:
    """The registered line whose Handler loads the model in ``model_dir`` (by its ``config.json`` model type)."""
    from model.pretrained import model_type

    try:
        wanted = model_type(model_dir)
    except ValueError as exc:
        raise ValueError(f"{exc}: name the line that serves it") from None
    for name in LINES:
        handler = handler_class(name)
        if wanted in getattr(handler, "model_types", (handler.model_type,)):
            return name
    raise ValueError(f"{model_dir}: no registered line serves model type {wanted!r} (lines: {', '.join(LINES)})")
