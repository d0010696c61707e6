#!/usr/bin/env python3
"""A webhook receiver for the local demo: answers 200 to every POST on 127.0.0.1:PORT and appends
one JSON line per request (path, headers that matter, body) to the file given.

    deploy/local/webhook-receiver.py 9999 .run/webhook.jsonl
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (the stdlib's name)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        line = {"path": self.path, "signature": self.headers.get("X-Signature"), "body": body}
        with open(sys.argv[2], "a", encoding="utf-8") as out:
            out.write(json.dumps(line) + "\n")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"ok":true}')

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
