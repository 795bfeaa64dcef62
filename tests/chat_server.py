"""A real OpenAI-compatible HTTP server in a thread, answering /v1/chat/completions with a Python function.

    with chat_server(lambda messages: (200, "A")) as base_url:
        ...  # base_url = "http://127.0.0.1:<port>/v1"

``respond(messages) -> (status, text)``: a status other than 200 sends an error body (the client retries
429 and 5xx). For tests of the clients that talk to such servers: judges, teachers, retries.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from typing import Callable, Iterator


@contextlib.contextmanager
def chat_server(respond: Callable[[list[dict]], tuple[int, str]]) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["content-length"])))
            status, text = respond(request["messages"])
            body = {"error": {"message": text}} if status != 200 else {
                "id": "x", "object": "chat.completion", "created": 0, "model": request["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("retry-after-ms", "10")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
