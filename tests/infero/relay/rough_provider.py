"""A stdio MCP server that misbehaves on request (a test provider, no SDK).

It answers `initialize` and `tools/list` properly; `tools/call` by tool name:
`garbage` prints a line that is not JSON-RPC, `wrong_id` answers another request id,
`shout` writes a 100 kB line and a short one to stderr then answers, `hang` never answers,
`exit` exits the process. Run: `python rough_provider.py`.
"""

from __future__ import annotations

import json
import sys


def answer(request_id: object, result: object) -> None:
    print(json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}), flush=True)


def text(value: str) -> dict[str, object]:
    return {"content": [{"type": "text", "text": value}]}


def main() -> None:
    for line in sys.stdin:
        message = json.loads(line)
        method, request_id = message.get("method"), message.get("id")
        if request_id is None:
            continue
        if method == "initialize":
            answer(
                request_id,
                {
                    "protocolVersion": message["params"]["protocolVersion"],
                    "capabilities": {"tools": {}},
                    "serverInfo": {"name": "rough", "version": "1"},
                },
            )
        elif method == "tools/call":
            name = message["params"]["name"]
            if name == "garbage":
                print("this is not JSON-RPC", flush=True)
            elif name == "wrong_id":
                answer(f"{request_id}-not-mine", text("lost"))
            elif name == "shout":
                sys.stderr.write("x" * 100_000 + "\nshort line\n")
                sys.stderr.flush()
                answer(request_id, text("shouted"))
            elif name == "exit":
                sys.exit(3)
            elif name != "hang":
                answer(request_id, text(name))
        else:
            answer(request_id, {})


if __name__ == "__main__":
    main()
