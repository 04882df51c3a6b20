"""Schemathesis against a running server's OpenAPI document (issue 9), as a program:
`python -m support.openapi_fuzz URL` prints each failure and exits 1 if there was any.

It runs in its own process: under pytest, schemathesis' modules are assertion-rewritten as
they load, and CPython 3.11's AST converter is not safe to share with a server thread.
"""

from __future__ import annotations

import sys
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

Operation = schemathesis.APIOperation[Any, Any, Any, Any]
Case = schemathesis.Case[Operation]

EXAMPLES = 25
"""Generated cases per operation."""

NOT_HTTP_CALLS = (
    "/api/state/stream",
    "/api/workers/connect",
    "/api/llm/connect",
    "/api/mcp/connect",
)
"""Not fuzzed: an event stream that never ends, and WebSocket upgrades (the link handshake
is not a request/answer an OpenAPI document can describe)."""


def designed_refusals_only(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: Case
) -> None:
    """On the MCP routes a 503 with `Retry-After` is the documented answer for a relay id that
    is not connected (it may be reconnecting); any other 5xx is a failure."""
    status = response.status_code
    if status >= 500 and not (status == 503 and "retry-after" in response.headers):
        raise AssertionError(f"server error {status}: {response.text[:200]}")


def fuzz(url: str) -> list[str]:
    """Run every operation of the served document; the failures, one text each."""
    schema = schemathesis.openapi.from_url(url + "/api/client/openapi.json")
    failures = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the served document parses
        operation = result.ok()
        if operation.path not in NOT_HTTP_CALLS:
            failure = fuzz_one(operation, url)
            if failure is not None:
                failures.append(failure)
    return failures


def fuzz_one(operation: Operation, url: str) -> str | None:
    """EXAMPLES generated calls of one operation, every answer checked against the document."""
    mcp = operation.path.startswith("/api/mcp/id/")

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def check(case: Case) -> None:
        response = case.call(base_url=url, headers={"Authorization": "Bearer k"}, timeout=10)
        case.validate_response(
            response,
            excluded_checks=[not_a_server_error] if mcp else None,
            additional_checks=[designed_refusals_only] if mcp else None,
        )

    try:
        check()
    except (AssertionError, BaseExceptionGroup) as exc:  # schemathesis' failures
        return f"{operation.method.upper()} {operation.path}: {exc}"
    return None


def main() -> int:
    """Fuzz the server at `sys.argv[1]`; 0 when every operation held."""
    failures = fuzz(sys.argv[1])
    for failure in failures:
        print(failure, end="\n\n")
    print(f"{len(failures)} operation(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
