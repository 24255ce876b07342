"""Errors in OpenAI's JSON shape, everywhere the server answers:

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature", "code": null}}
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.errors import ContextOverflowError, SamplingParamsError, UserError

TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
         404: "invalid_request_error", 405: "invalid_request_error", 409: "invalid_request_error",
         413: "invalid_request_error", 429: "rate_limit_error", 503: "server_busy"}


class APIError(Exception):
    """An error answered as OpenAI does (status, message, param, code; extra headers such as Retry-After)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": TYPES.get(status, "server_error" if status >= 500 else
                                                             "invalid_request_error"),
                      "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


# OpenAI's names for our sampling fields, so a 400 names the field the client sent.
OPENAI_NAMES = {"max_new_tokens": "max_tokens"}


def from_user_error(exc: UserError) -> APIError:
    """A project error (bad parameter, prompt too long, busy engine) as the API error it should be."""
    from model.scheduler import SchedulerBusyError, SchedulerClosedError

    message = str(exc)
    if isinstance(exc, SchedulerBusyError):
        return APIError(503, message, code="server_busy", headers={"Retry-After": str(max(1, round(exc.retry_after)))})
    if isinstance(exc, SchedulerClosedError):
        return APIError(503, message, code="shutting_down")
    if isinstance(exc, ContextOverflowError):
        return APIError(400, message, param="messages", code="context_length_exceeded")
    if isinstance(exc, SamplingParamsError):
        name = message.split("=", 1)[0].strip() if "=" in message.split(" ", 1)[0] else None
        return APIError(400, message, param=OPENAI_NAMES.get(name, name) if name else None)
    return APIError(400, message)


def install(app: FastAPI) -> None:
    """Every error the app can raise answers in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError) -> JSONResponse:
        err = from_user_error(exc)
        return error_response(err.status, err.message, err.param, err.code, err.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else str(first.get("msg", "invalid request"))
        return error_response(400, message, param, "invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}")
