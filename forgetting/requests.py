"""Checking an erasure request against the class list: which classes, and whether it can be done.

Pure Python (no torch), so the CLI can validate a request in a fraction of a second.
"""

from __future__ import annotations

from collections.abc import Sequence


class RequestError(ValueError):
    """An erasure request that cannot be carried out as asked."""


def validate_request(class_names: Sequence[str], forget: Sequence[str],
                     earlier: Sequence[str] = (), reference: Sequence[str] = ()) -> list[int]:
    """Names -> indices, with a clear error for each way a request can be wrong.
    ``reference``: the never-seen reference classes (``data.reference_classes``)."""
    if not forget:
        raise RequestError("empty request: name at least one class to forget")
    dup = sorted({c for c in forget if list(forget).count(c) > 1})
    if dup:
        raise RequestError(f"duplicate class in request: {', '.join(dup)}")
    names = list(class_names)
    idx = []
    for c in forget:
        if c not in names:
            shown = ", ".join(names[:20]) + (f", ... ({len(names)} classes)" if len(names) > 20
                                             else "")
            raise RequestError(f"unknown class {c!r}; known: {shown}")
        if c in earlier:
            raise RequestError(f"class {c!r} is already forgotten")
        if c in reference:
            raise RequestError(f"class {c!r} is a never-seen reference class of the evidence "
                               "(data.reference_classes): no model ever trained on it, so "
                               "there is nothing to forget")
        idx.append(names.index(c))
    if len(set(earlier) | set(forget) | set(reference)) >= len(names):
        raise RequestError("request would forget every remaining class; at least one must stay")
    return idx
