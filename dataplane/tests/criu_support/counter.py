#!/usr/bin/env python3
"""CRIU test handler: holds state (a counter) across dump and restore.

GET /<anything> -> 200, body "count=N pid=P" where N counts requests served
                   by this process image (1 for the first) and P is getpid().
Like the quickstart's hello.py it keeps its AETHER_SOCKET connection open
(aetherd has closed its end by the time of a dump).
"""
import os
import socket
from http.server import BaseHTTPRequestHandler, HTTPServer

COUNT = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        global COUNT
        COUNT += 1
        body = f"count={COUNT} pid={os.getpid()}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


port = int(os.environ.get("AETHER_TRIGGER_PORT", 8080))
server = HTTPServer(("0.0.0.0", port), Handler)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(os.environ["AETHER_SOCKET"])
sock.send(b"READY")
server.serve_forever()
