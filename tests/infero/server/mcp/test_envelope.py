"""JSON-RPC envelope checks and broker error bodies (infero.protocol.mcp)."""

from __future__ import annotations

import json

import pytest

from infero.protocol.mcp import (
    INVALID_REQUEST,
    PARSE_ERROR,
    EnvelopeError,
    error_body,
    parse_envelope,
    request_id_of,
    sse_error_events,
)


def test_a_request_is_a_call_named_by_its_method() -> None:
    env = parse_envelope(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}')
    assert env.is_call
    assert env.requests == ((1, "tools/call"),)
    assert env.first_method == "tools/call"


def test_notifications_and_responses_are_not_calls() -> None:
    note = parse_envelope(b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{}}')
    assert not note.is_call
    assert note.notifications == ("notifications/cancelled",)
    answer = parse_envelope(b'{"jsonrpc":"2.0","id":"s1","result":{}}')
    assert (answer.is_call, answer.responses, answer.first_method) == (False, 1, "response")


def test_a_batch_lists_every_message() -> None:
    body = json.dumps(
        [
            {"jsonrpc": "2.0", "id": 1, "method": "ping"},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
        ]
    ).encode()
    env = parse_envelope(body)
    assert env.batch
    assert env.requests == ((1, "ping"),)
    assert env.notifications == ("notifications/initialized",)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{nope", PARSE_ERROR),
        (b"\xff\xfe", PARSE_ERROR),
        (b"[]", INVALID_REQUEST),
        (b"42", INVALID_REQUEST),
        (b'{"id":1,"method":"ping"}', INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":""}', INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":3}', INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1}', INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":"' + b"m" * 200 + b'"}', INVALID_REQUEST),
    ],
)
def test_invalid_bodies_are_refused_with_the_json_rpc_code(body: bytes, code: int) -> None:
    with pytest.raises(EnvelopeError) as refused:
        parse_envelope(body)
    assert refused.value.code == code


def test_deeply_nested_json_is_a_parse_error_not_a_crash() -> None:
    with pytest.raises(EnvelopeError):
        parse_envelope(b"[" * 100_000)


def test_error_bodies_carry_the_broker_code_and_the_request_id() -> None:
    body = json.loads(error_body("MCP_TIMEOUT", "slow", request_id=9))
    assert body == {
        "jsonrpc": "2.0",
        "id": 9,
        "error": {"code": -32000, "message": "slow", "data": {"mcp": "MCP_TIMEOUT"}},
    }
    assert request_id_of(b'{"jsonrpc":"2.0","id":"a","method":"x"}') == "a"
    assert request_id_of(b"[1]") is None


def test_sse_error_events_answer_each_pending_request() -> None:
    events = sse_error_events("MCP_PROVIDER_UNAVAILABLE", "gone", [1, "b"]).decode()
    parts = [p for p in events.split("\n\n") if p]
    assert [json.loads(p.split("data: ", 1)[1])["id"] for p in parts] == [1, "b"]
    assert all(p.startswith("event: message\n") for p in parts)
