"""API keys and browser sessions.

A key (``tf-`` + 43 random characters) belongs to one project; the store keeps only its SHA-256. Every
request carries ``Authorization: Bearer <key>`` or the dashboard's session cookie (``SESSION_COOKIE``, a
random token whose hash is stored, ended by ``end_session`` or by revoking its key). Until the first key is
created the server is open to this machine only (it binds 127.0.0.1 and refuses another address without
keys), and every request acts for the project ``default``.
"""

import hashlib
import secrets
from typing import Any

from tuneforge.serve.errors import APIError

SESSION_COOKIE = "tuneforge_session"
SESSION_TTL = 7 * 24 * 3600.0  # seconds
OPEN_PROJECT = "default"  # the project of a server without keys
KEY_PREFIX = "tf-"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_project_name(name: str) -> str:
    import re

    from tuneforge.errors import TuneforgeError

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name or ""):
        raise TuneforgeError(
            f"project name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit."
        )
    return name


def create_key(store, project: str) -> tuple[str, dict]:
    """A new key for ``project``: (the key, shown once; its stored record without the key)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, store.add_key(check_project_name(project), hash_secret(key), key[:10])


def project_of_key(store, key: str) -> str | None:
    row = store.key_by_hash(hash_secret(key)) if key else None
    return row["project"] if row else None


def new_session(ctx, key: str) -> str | None:
    """A session token for the dashboard's cookie, or None for a wrong or revoked key."""
    row = ctx.store.key_by_hash(hash_secret(key or ""))
    if row is None:
        return None
    token = secrets.token_urlsafe(32)
    ctx.store.add_session(hash_secret(token), row["id"], row["project"], SESSION_TTL)
    return token


def end_session(ctx, token: str) -> None:
    if token:
        ctx.store.end_session(hash_secret(token))


def authenticate(ctx, authorization: str | None, cookie: str | None) -> str:
    """The project a request acts for; ``APIError(401)`` when it has no valid key or session."""
    if not ctx.store.has_keys():
        return OPEN_PROJECT
    if authorization:
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise APIError(401, "The Authorization header must be 'Bearer <key>'.", None, "invalid_api_key")
        project = project_of_key(ctx.store, key.strip())
        if project is None:
            raise APIError(
                401,
                f"Incorrect API key provided: {key.strip()[:6]}... Create one with `tuneforge keys create "
                f"--project NAME` on the server.",
                None,
                "invalid_api_key",
            )
        return project
    if cookie:
        project = ctx.store.session_project(hash_secret(cookie))
        if project is not None:
            return project
        raise APIError(401, "Your session has ended; log in again.", None, "session_expired")
    raise APIError(
        401,
        "You didn't provide an API key. Send 'Authorization: Bearer <key>' (the openai client's api_key).",
        None,
        "missing_api_key",
    )


def project_dependency(ctx) -> Any:
    """The FastAPI dependency that returns the caller's project (used as ``Depends(require_project)``)."""
    from fastapi import Request

    def require_project(request: Request) -> str:
        return authenticate(ctx, request.headers.get("authorization"), request.cookies.get(SESSION_COOKIE))

    return require_project
