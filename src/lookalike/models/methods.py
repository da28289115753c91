"""What ``lookalike train`` can train, and the settings each method takes, read from the code.

Nothing here is a hand-written list: the methods are the registered embedders that learn
(``needs_fit``), the one-line description is the first sentence of the class docstring, the
model settings are the constructor's keyword arguments (and its parents' when it forwards
``**options``) with their defaults, the training settings are the class's
:meth:`~lookalike.models.base.Embedder.training_options`, and the allowed values come from
:attr:`~lookalike.models.base.Embedder.option_choices` (the same constants the classes check
their arguments against).
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass
from typing import Any

from lookalike.models import base

#: Constructor arguments that are not settings of a training run.
_NOT_SETTINGS = ("self", "base_config", "cache_dir", "model_dir")


@dataclass(frozen=True)
class Setting:
    """One ``--option KEY=VALUE`` a method takes: ``group`` is ``model`` (saved with the model)
    or ``training`` (how it is trained); ``choices`` lists the allowed values where there are
    a few names."""

    name: str
    default: Any
    group: str
    choices: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "default": _plain(self.default), "group": self.group,
                "choices": list(self.choices)}


@dataclass(frozen=True)
class Method:
    """A trainable method: its registry name, what it is, what it learns from, its settings."""

    name: str
    summary: str
    learns_from: str
    settings: tuple[Setting, ...]

    def group(self, group: str) -> list[Setting]:
        """The settings of one group (``model`` or ``training``)."""
        return [s for s in self.settings if s.group == group]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "learns_from": self.learns_from,
                "settings": [s.to_json() for s in self.settings]}


def trainable_methods() -> list[Method]:
    """Every registered embedder that learns from a catalogue, by name."""
    return [describe_method(name) for name in base.available()
            if base.embedder_class(name).needs_fit]


def ready_made_embedders() -> list[str]:
    """Registered embedders that need no training (index with ``--embedder NAME`` directly)."""
    return [name for name in base.available() if not base.embedder_class(name).needs_fit]


def describe_method(name: str) -> Method:
    """One registered embedder as a :class:`Method` (UnknownNameError for unknown names)."""
    cls = base.embedder_class(name)
    choices = dict(cls.option_choices)
    model = [Setting(key, default, "model", tuple(choices.get(key, ())))
             for key, default in constructor_settings(cls).items()]
    training = [Setting(key, default, "training", tuple(choices.get(key, ())))
                for key, default in cls.training_options().items()]
    return Method(name=name, summary=summary(cls), learns_from=_learns_from(cls),
                  settings=tuple(model + training))


def constructor_settings(cls: type) -> dict[str, Any]:
    """Keyword arguments of ``cls`` with their defaults (a class that forwards ``**options``
    adds its parents'), without the ones training fills in."""
    settings: dict[str, Any] = {}
    for klass in cls.__mro__:
        if "__init__" not in klass.__dict__ or klass is object:
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        for parameter in parameters:
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY) \
                    and parameter.name not in _NOT_SETTINGS:
                settings.setdefault(parameter.name, parameter.default)
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    learned = set(getattr(cls, "learned_config", ()))
    return {k: (None if v is inspect.Parameter.empty else v) for k, v in settings.items()
            if k not in learned}


def summary(cls: type) -> str:
    """The first sentence of the class docstring, without reST markup and without a closing
    "(method NAME)" that repeats the name."""
    paragraph = (inspect.getdoc(cls) or cls.__name__).split("\n\n")[0]
    text = re.sub(r"\s+", " ", paragraph.replace("``", "")).strip()
    match = re.match(r"(.+?\.)(\s|$)", text)
    text = (match.group(1) if match else text).rstrip(".")
    return re.sub(r",? \(?method [\w-]+\)?$", "", text)


def format_value(value: Any) -> str:
    """A default as it would be typed after ``--option KEY=``."""
    value = _plain(value)
    if isinstance(value, (bool, type(None))):
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, (list, dict)):
        return re.sub(r"\s+", "", json.dumps(value))
    return str(value)


def _learns_from(cls: type) -> str:
    from lookalike.models.learners import training_input

    source = ("vectors of its base embedder" if training_input(cls) == "vectors"
              else "images")
    if getattr(cls, "needs_labels", True):
        return f"{source} and class labels (--label-column)"
    return f"{source} only, no labels"


def _plain(value: Any) -> Any:
    """JSON-able: tuples as lists (nested too); anything else unknown as text."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
