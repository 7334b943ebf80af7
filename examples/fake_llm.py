"""A small OpenAI-compatible HTTP server for offline demos and tests.

It answers ``/v1/chat/completions`` (plain and server-sent-event streaming),
``/v1/completions`` and ``/v1/embeddings`` with deterministic bodies and a
``usage`` block, so real clients (``openai``) and real instrumentations produce
real spans without a network. Token counts are derived from the request so a
test can predict them: prompt tokens = number of whitespace-separated words in
all messages, completion tokens = words in the reply.

A model name starting with ``fail-`` makes the server answer with that HTTP
status (``fail-500`` -> 500, ``fail-429`` -> 429) and an OpenAI error body.

Bodies carry the fields api.openai.com sends besides the essentials
(``usage.prompt_tokens_details`` / ``completion_tokens_details``, ``service_tier``,
``system_fingerprint``): some instrumentations (OpenLIT) lose a call's usage without them.
``reply`` sets the answer text (tests put a canary in it to follow content).

Run it standalone: ``python examples/fake_llm.py --port 8000``.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REPLY = "Hello from the fake model"


def _words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    if isinstance(value, dict):
        return _words(value.get("content", ""))
    return 0


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeLLMServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        self.server.requests.append((self.path, request))
        model = str(request.get("model", "gpt-fake"))
        if self.server.delay_s:
            time.sleep(self.server.delay_s)
        if model.startswith("fail-"):
            status = int(model.split("-", 1)[1])
            self._json(status, {"error": {"message": f"fake failure {status}", "type": "server_error",
                                          "code": str(status)}})
            return
        reply = self.server.reply
        if self.path.endswith("/chat/completions"):
            prompt = _words(request.get("messages", []))
            if request.get("stream"):
                self._stream_chat(model, prompt, request)
            else:
                self._json(200, self._chat_body(model, prompt))
        elif self.path.endswith("/completions"):
            prompt = _words(request.get("prompt", ""))
            completion = _words(reply)
            self._json(200, {
                "id": "cmpl-fake", "object": "text_completion", "created": int(time.time()), "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [{"index": 0, "text": reply, "finish_reason": "stop", "logprobs": None}],
                "usage": _usage(prompt, completion),
            })
        elif self.path.endswith("/embeddings"):
            inputs = request.get("input", "")
            items = inputs if isinstance(inputs, list) and inputs and isinstance(inputs[0], str) else [inputs]
            prompt = _words(items)
            self._json(200, {
                "object": "list", "model": model,
                "data": [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(items))],
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt},  # what api.openai.com sends for embeddings
            })
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

    def _chat_body(self, model: str, prompt: int) -> dict[str, Any]:
        reply = self.server.reply
        return {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
            "system_fingerprint": "fp_fake", "service_tier": "default",
            "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                         "message": {"role": "assistant", "content": reply, "refusal": None}}],
            "usage": _usage(prompt, _words(reply)),
        }

    def _stream_chat(self, model: str, prompt: int, request: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        words = self.server.reply.split()
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model, "system_fingerprint": "fp_fake", "service_tier": "default"}
        for i, word in enumerate(words):
            delta: dict[str, Any] = {"content": (" " if i else "") + word}
            if i == 0:
                delta["role"] = "assistant"
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            if self.server.chunk_delay_s:
                time.sleep(self.server.chunk_delay_s)
        last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        self.wfile.write(f"data: {json.dumps(last)}\n\n".encode())
        if (request.get("stream_options") or {}).get("include_usage"):
            usage = {**base, "choices": [], "usage": _usage(prompt, len(words))}
            self.wfile.write(f"data: {json.dumps(usage)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class FakeLLMServer(ThreadingHTTPServer):
    """Threaded fake OpenAI server; ``with FakeLLMServer() as s: s.base_url``."""

    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0, delay_s: float = 0.0,
                 chunk_delay_s: float = 0.0, reply: str = REPLY) -> None:
        super().__init__((host, port), _Handler)
        self.reply = reply
        self.delay_s = delay_s
        self.chunk_delay_s = chunk_delay_s
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> FakeLLMServer:
        self._thread = threading.Thread(target=self.serve_forever, name="fake-llm", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    server = FakeLLMServer(args.host, args.port)
    print(f"fake LLM listening on {server.base_url}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
