"""Turning an EbpflbError into one line on stderr and exit status 1: the error, then
its own fix (errors.EbpflbError.fix) unless the message already says it."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from ebpflb.errors import EbpflbError

P = ParamSpec("P")
R = TypeVar("R")


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except EbpflbError as exc:
            typer.echo(one_line(exc), err=True)
            raise typer.Exit(1) from exc

    return wrapper


def one_line(exc: EbpflbError) -> str:
    text = " ".join(str(exc).split())
    if exc.fix and exc.fix not in text:
        text = f"{text}; fix: {exc.fix}"
    return f"error: {text}"
