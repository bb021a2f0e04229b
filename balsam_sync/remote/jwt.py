"""What a bearer token says about itself (its JWT claims), read without verifying it.

The server verifies tokens; the client only reads ``exp`` (to ask for a new login before a
request is refused) and ``sub``/``username`` (to keep one mirror per user).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from typing import Any


def claims(token: str) -> dict[str, Any]:
    """Return the claims of a JWT ({} when the token is not a readable JWT)."""
    try:
        payload = token.split(".")[1]
        data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def expiry(token: str) -> datetime | None:
    """Return when the token expires (its ``exp`` claim), if it says."""
    exp = claims(token).get("exp")
    try:
        return datetime.fromtimestamp(float(exp), timezone.utc) if exp is not None else None
    except (TypeError, ValueError, OverflowError):
        return None


def user_of(token: str) -> str | None:
    """Return a stable name for the token's user: ``username#sub`` (None if unreadable)."""
    found = claims(token)
    sub, name = found.get("sub"), found.get("username")
    if sub is None and name is None:
        return None
    return f"{name or ''}#{sub if sub is not None else ''}"
