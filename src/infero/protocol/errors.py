"""OpenAI's error shape, used for every error a client sees on `/api/v1/*`."""

from __future__ import annotations

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    """`{"message", "type", "code", "param"}` as the OpenAI SDKs read it."""

    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorBody(BaseModel):
    """`{"error": {...}}`."""

    error: ErrorDetail


def error_json(message: str, type_: str, code: str | None = None) -> str:
    """Serialized error body."""
    return ErrorBody(error=ErrorDetail(message=message, type=type_, code=code)).model_dump_json()
