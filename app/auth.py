"""Bearer-token auth: constant-time comparison, fail closed when no key is configured."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

# auto_error=False: we answer 401 with our own detail (FastAPI's default is 403 without the header).
bearer_scheme = HTTPBearer(auto_error=False, description="TRAINER_API_KEY as a bearer token")


def check_token(expected: str | None, presented: str | None) -> None:
    """Raise the HTTP error for a missing key (503) or a missing/wrong token (401)."""
    if not expected:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="TRAINER_API_KEY is not set on the server, so protected endpoints are disabled; "
            "set it in the environment or .env and restart",
        )
    if presented is None or not hmac.compare_digest(presented.encode(), expected.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong bearer token: send 'Authorization: Bearer <TRAINER_API_KEY>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


def require_token(request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
    key = request.app.state.settings.trainer_api_key
    check_token(key.get_secret_value() if key else None, credentials.credentials if credentials else None)
