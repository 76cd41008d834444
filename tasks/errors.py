"""Failures the layers above catch by type, in a module of their own so that any task module
can raise them without importing another."""

from __future__ import annotations


class ServiceUnavailable(RuntimeError):
    """The tracking server (or another service) did not answer after retries."""


class StackSettingsMissing(RuntimeError):
    """A shared workspace used without the stack's client settings."""
