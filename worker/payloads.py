"""A task's message that does not parse into its typed payload is refused in one line.

Tasks take typed payloads (``@app.task(pydantic=True)``, contract/work.py), and Celery parses
them before the task's body runs. A message that reached the broker without the producer (or
from a version that no longer matches) would fail there with a pydantic traceback, leave the job
``queued`` until the lost-job sweep, and leave a caller waiting for a signed URL without an
answer. Here the payload is parsed first (Celery's own parse then takes the parsed model as it
is): a refusal is logged as one line naming each field and what is wrong, never the value of a
field other than an excerpt the rule itself quotes, and the task answers through its
``refused`` hook (``ImageGenTask.refused``: nothing; the job task ends the job when it can
name it; ``sign_url`` returns a failure to its caller).
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

MAX_PROBLEM_CHARS = 600  # a log line's worth: a forged message may break every field


class PayloadRefused(ValueError):
    """The message's arguments do not parse; ``problem`` says which fields and why."""

    def __init__(self, problem: str, arguments: Mapping[str, Any]) -> None:
        super().__init__(problem)
        self.problem = problem
        self.arguments = arguments  # as they arrived (by parameter name), for the task's refusal


def parse_arguments(
    fun: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> inspect.BoundArguments | None:
    """``fun``'s arguments with each payload parameter (annotated with a pydantic model) parsed;
    PayloadRefused if the arguments do not bind or a payload does not parse; None for a function
    whose signature cannot be read (Celery's own tasks: left to Celery)."""
    signature, models = _payload_parameters(fun)
    if signature is None:
        return None
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:  # missing or extra arguments
        raise PayloadRefused(f"its arguments do not fit the task: {exc}", {}) from None
    problems: list[str] = []
    for name, model in models.items():
        if name not in bound.arguments or isinstance(bound.arguments[name], model):
            continue
        try:
            bound.arguments[name] = model.model_validate(bound.arguments[name])
        except ValidationError as exc:
            problems.append(describe(exc, name))
    if problems:
        raise PayloadRefused(_bounded("; ".join(problems)), dict(bound.arguments))
    return bound


@functools.cache
def _payload_parameters(fun: Callable[..., Any]) -> tuple[inspect.Signature | None, dict[str, type[BaseModel]]]:
    original = inspect.unwrap(fun)
    try:
        signature = inspect.signature(original)
        hints = typing.get_type_hints(original)
    except (TypeError, ValueError, NameError):
        return None, {}
    models = {
        name: hint
        for name, hint in hints.items()
        if name in signature.parameters and inspect.isclass(hint) and issubclass(hint, BaseModel)
    }
    return signature, models


def describe(error: ValidationError, name: str) -> str:
    """One line naming each field of payload ``name`` that does not parse, and why (no value,
    beyond an excerpt a rule's own message quotes)."""
    return _bounded("; ".join(f"{name}: {_problem(e)}" for e in error.errors(include_url=False, include_input=False)))


def _problem(error: Mapping[str, Any]) -> str:
    where = ".".join(str(part) for part in error.get("loc", ())) or "(the payload)"
    message = " ".join(str(error.get("msg", "")).split())  # one line, whatever a rule's message holds
    return f"{where}: {message}"


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_PROBLEM_CHARS else f"{text[:MAX_PROBLEM_CHARS]}... ({len(text)} characters)"
