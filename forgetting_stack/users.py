"""The stack's people and what they may do: ``users.json`` (mode 0600), one entry per user with
a role, read again by the git server on every change (no restart).

Tokens are generated (32 random bytes), never chosen, so a salted SHA-256 is enough to store
them: there is no dictionary to try, and a slow hash (PBKDF2, as MLflow uses) would cost every
one of git's several requests per fetch a third of a second."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from pathlib import Path

from .settings import USER, StackError, write_private

ADMIN = "admin"  # the stack's own identity (``USER``): what workers and `stack up` use
ROLES = ("reader", "submitter", "operator")
GIT_WRITE = {"operator", ADMIN}  # pushes: workers and operators (promote, rollback, purge)
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def _digest(salt: str, token: str) -> str:
    return hashlib.sha256(f"{salt}:{token}".encode()).hexdigest()


class UsersFile:
    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict[str, dict]:
        if not self.path.is_file():
            return {}
        return json.loads(self.path.read_text())["users"]

    def _write(self, users: dict[str, dict]) -> None:
        write_private(self.path, json.dumps({"users": users}, indent=2, sort_keys=True) + "\n")

    def check(self, name: str, token: str) -> str | None:
        """The role of ``name`` if ``token`` is its token, else None (constant-time compare)."""
        u = self.read().get(name)
        if u is None:
            _digest("x", token)  # the same work either way
            return None
        return u["role"] if hmac.compare_digest(u["sha256"], _digest(u["salt"], token)) else None

    def set(self, name: str, role: str, token: str) -> None:
        if role not in (*ROLES, ADMIN):
            raise StackError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
        users = self.read()
        if self.check(name, token) == role:
            return  # unchanged (``up`` sets its own identity each time): keep the file as is
        salt = secrets.token_hex(8)
        users[name] = {"role": role, "salt": salt, "sha256": _digest(salt, token)}
        self._write(users)

    def add(self, name: str, role: str) -> str:
        """A new user with a generated token (returned once, stored only as a hash)."""
        if not NAME.match(name) or name == USER:
            raise StackError(f"user name {name!r}: lower-case letters, digits, '-' and '_', "
                             f"at most 32, starting with a letter, not {USER!r}")
        if name in self.read():
            raise StackError(f"user {name!r} exists: `forget stack user remove {name}` first")
        token = secrets.token_urlsafe(32)
        self.set(name, role, token)
        return token

    def remove(self, name: str) -> None:
        users = self.read()
        if name not in users or users[name]["role"] == ADMIN:
            raise StackError(f"no user {name!r}" if name not in users
                             else f"{name!r} is the stack's own identity")
        del users[name]
        self._write(users)

    def roles(self) -> dict[str, str]:
        return {n: u["role"] for n, u in sorted(self.read().items())}
