#!/usr/bin/env python3
"""Test handler: sends READY at once but binds its port only after
TEST_BIND_DELAY_MS milliseconds ("never": it never listens)."""
import os
import socket
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = b"late but here"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(os.environ["AETHER_SOCKET"])
sock.send(b"READY")
delay = os.environ.get("TEST_BIND_DELAY_MS", "0")
if delay == "never":
    time.sleep(3600)
time.sleep(int(delay) / 1000)
HTTPServer(("0.0.0.0", int(os.environ["AETHER_TRIGGER_PORT"])), Handler).serve_forever()
