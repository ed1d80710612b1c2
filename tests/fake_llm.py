"""A scripted OpenAI-compatible server on 127.0.0.1 for tests: real HTTP, real SDK.

Each POST to /v1/chat/completions takes the next step of the script:

- ``("answer", text)``: 200 with a chat completion whose message is ``text``;
- ``("status", code)`` or ``("status", (code, message))``: that HTTP error (429 carries
  ``retry-after-ms: 10``);
- ``("hang", seconds)``: sleep, then answer with the next step;
- ``("raw", body)``: 200 with ``body`` as is (malformed JSON; one event when streamed).

A request with ``stream: true`` gets its answer as server-sent events.

GET /v1/models lists one model. Every request is logged (path, headers, JSON body).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Step = tuple[str, Any]


@dataclass
class FakeLLM:
    base_url: str
    script: list[Step] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_step(self) -> Step:
        with self.lock:
            if not self.script:
                return ("status", 503)
            return self.script.pop(0)

    def chat_requests(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"].endswith("/chat/completions")]


def completion(text: str, model: str = "fake-model") -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 100 + len(text) // 10,
            "completion_tokens": len(text) // 4,
            "total_tokens": 100 + len(text) // 10 + len(text) // 4,
        },
    }


def _handler(fake: FakeLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # client gave up
                self.wfile.write(body)

        def _stream(self, text: str, body: dict[str, Any]) -> None:
            """The answer as server-sent events, in pieces of 8 characters, the usage
            last when asked (``stream_options.include_usage``), as the OpenAI API does."""
            whole = completion(text, body.get("model", "m"))
            piece = {k: whole[k] for k in ("id", "created", "model")}
            piece["object"] = "chat.completion.chunk"

            def choice(delta: dict[str, str], finish: str | None) -> dict[str, Any]:
                return {**piece, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

            events = [choice({"content": text[i : i + 8]}, None) for i in range(0, len(text), 8)]
            events.append(choice({}, "stop"))
            if (body.get("stream_options") or {}).get("include_usage"):
                events.append({**piece, "choices": [], "usage": whole["usage"]})
            self._events([json.dumps(e) for e in events] + ["[DONE]"])

        def _events(self, data: list[str]) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # client gave up
                for item in data:
                    self.wfile.write(f"data: {item}\n\n".encode())
                    self.wfile.flush()

        def do_GET(self) -> None:
            fake.requests.append(
                {
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": None,
                }
            )
            if self.path.endswith("/models"):
                body = {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}
                self._send(200, json.dumps(body).encode())
            else:
                self._send(404, b'{"error": {"message": "not found"}}')

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            fake.requests.append(
                {
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body": body,
                }
            )
            kind, value = fake.next_step()
            if kind == "hang":
                time.sleep(value)
                kind, value = fake.next_step()
            if kind == "answer" and body.get("stream"):
                self._stream(value, body)
            elif kind == "answer":
                self._send(200, json.dumps(completion(value, body.get("model", "m"))).encode())
            elif kind == "raw" and body.get("stream"):
                self._events([value])
            elif kind == "raw":
                self._send(200, value.encode())
            elif kind == "status":
                code, text = value if isinstance(value, tuple) else (value, f"scripted {value}")
                message = {"error": {"message": text, "type": "test"}}
                headers = {"retry-after-ms": "10"} if code == 429 else {}
                self._send(code, json.dumps(message).encode(), headers)
            else:  # pragma: no cover - a bad script
                raise ValueError(kind)

    return Handler


@contextmanager
def serve() -> Iterator[FakeLLM]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(FakeLLM("")))
    fake = FakeLLM(f"http://127.0.0.1:{server.server_address[1]}/v1")
    server.RequestHandlerClass = _handler(fake)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
