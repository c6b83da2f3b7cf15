"""HTTP Basic login for the API (`--api-auth user:pass[,user2:pass2]`).

Every credential pair is compared in constant time, and all pairs are always compared, so neither
the time taken nor an early exit tells which part of a guess was right.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPBasic, HTTPBasicCredentials


def parse_credentials(spec: str | None, flag: str = "--api-auth") -> list[tuple[str, str]]:
    """"u1:p1,u2:p2" -> [("u1", "p1"), ("u2", "p2")]; a password may itself contain ':'."""
    pairs = []
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep or not user:
            raise ValueError(f"{flag} takes USER:PASS[,USER:PASS]")
        pairs.append((user, password))
    return pairs


def credentials_match(credentials: list[tuple[str, str]], user: str, password: str) -> bool:
    found = False
    for known_user, known_password in credentials:
        same_user = hmac.compare_digest(known_user.encode(), user.encode())
        same_password = hmac.compare_digest(known_password.encode(), password.encode())
        found |= same_user and same_password
    return found


def basic_auth_dependency(credentials: list[tuple[str, str]]) -> Callable[..., str | None]:
    """A FastAPI dependency returning the logged-in user (None when no login is configured)."""
    if not credentials:
        return lambda: None  # no security scheme: an Authorization header means nothing here

    security = HTTPBasic(auto_error=False)

    def require_login(given: HTTPBasicCredentials | None = Depends(security)) -> str | None:
        if given is None or not credentials_match(credentials, given.username, given.password):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Incorrect username or password",
                                headers={"WWW-Authenticate": "Basic"})
        return given.username

    return require_login
