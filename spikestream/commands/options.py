"""Option groups shared by several commands, declared once.

`with_options` appends a group's options to a typer command's signature and hands the
command one built value instead (a DriftSpec, the runtime's config values), so commands
that share a group cannot drift apart in names, help or defaults.
"""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any


def with_options(options: Sequence[tuple[str, Any, Any]], inject: str,
                 build: Callable[[dict[str, Any]], Any]) -> Callable:
    """Decorator: add `options` ((name, annotation, default), ...) to a command; it receives `build(values)` as `inject`."""
    def decorate(command: Callable) -> Callable:
        sig = inspect.signature(command, eval_str=True)
        params = [p for p in sig.parameters.values() if p.name != inject]
        params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann, default=default)
                   for name, ann, default in options]

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            values = {name: kwargs.pop(name) for name, _, _ in options}
            return command(*args, **{inject: build(values)}, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=params)
        return wrapper
    return decorate
