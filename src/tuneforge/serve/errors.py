"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with the right status code.

Raise ``APIError`` (or one of the helpers) anywhere in a request; ``install_handlers`` turns it, FastAPI's
request-validation errors and any unexpected exception into that body. ``x-should-retry: false`` is sent
where retrying the same request cannot help (every 4xx but 429), so the official ``openai`` client does not
retry a bad request three times (it retries 409 and 5xx by default).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class APIError(Exception):
    """A request that fails: status, message (what is wrong and the fix), the parameter, a stable code."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        retry: bool | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or TYPES.get(status, "invalid_request_error")
        self.retry = retry if retry is not None else (status == 429 or status >= 500)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def not_found(what: str, ident: str, param: str | None = None) -> APIError:
    return APIError(
        404, f"No {what} with id '{ident}' in this project.", param, f"{what.replace(' ', '_')}_not_found"
    )


def conflict(
    message: str, param: str | None = None, code: str | None = None, retry: bool = False
) -> APIError:
    return APIError(409, message, param, code, retry=retry)


def error_response(err: APIError):
    from fastapi.responses import JSONResponse

    headers = {"x-should-retry": "true" if err.retry else "false"}
    if err.status == 401:
        headers["www-authenticate"] = "Bearer"
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "form", "header")]
    return ".".join(parts) or None


def install_handlers(app) -> None:
    """Every failure of ``app`` answers in OpenAI's error shape; none stops the server."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    @app.exception_handler(APIError)
    async def _api(request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        param = _param(tuple(first.get("loc", ())))
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg, param = "The request body is not valid JSON.", None
        elif first.get("type") == "missing":
            msg = f"Missing required parameter: '{param}'."
        else:
            msg = f"Invalid value for '{param}': {msg}."
        return error_response(APIError(400, msg, param, "invalid_request"))

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        status = exc.status_code
        msg = str(exc.detail)
        if status == 404:
            msg = f"Unknown path {request.method} {request.url.path}. The API lives under /v1 (see docs/service.md)."
        elif status == 405:
            msg = f"{request.method} is not allowed on {request.url.path}."
        return error_response(APIError(status, msg, None, None, TYPES.get(status, "invalid_request_error")))

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(
            APIError(500, f"The server failed on this request ({type(exc).__name__}: {exc}). It keeps running; "
                     f"the server log has the traceback.", None, "server_error")
        )  # fmt: skip
