"""A stand-in for a served student that misbehaves (issue 22, N3 and N14), started through
`student.generation.server.command`: it lists its model on /v1/models, then answers every
completion with an HTTP error (`--status 400`), or answers `--answer-first` completions and
then exits with `--exit-code` (a server that dies mid-run)."""

from __future__ import annotations

import argparse
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--status", type=int, default=400)
    parser.add_argument("--exit-code", type=int, default=None)
    parser.add_argument("--answer-first", type=int, default=0)
    args = parser.parse_args()
    answered = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_) -> None:
            pass

        def reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self.reply(200, {"object": "list", "data": [{"id": args.name, "object": "model"}]})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if len(answered) < args.answer_first:
                answered.append(1)
                choice = {"index": 0, "text": "fine", "finish_reason": "stop", "logprobs": None}
                usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
                body = {"id": "c", "object": "text_completion", "created": 0, "model": args.name}
                self.reply(200, {**body, "choices": [choice], "usage": usage})
                return
            if args.exit_code is not None:
                print(f"fake student server: exiting with code {args.exit_code}", flush=True)
                os._exit(args.exit_code)
            message = {"message": "prompt_token_ids: this engine refuses every prompt"}
            self.reply(args.status, {"error": message})

    print(f"fake student server on port {args.port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
