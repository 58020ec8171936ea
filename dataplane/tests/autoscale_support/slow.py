#!/usr/bin/env python3
"""Handler of the autoscaling benchmark (bench/src/autoscale): requests that
take a set time, many at once per instance.

GET /sleep/<ms>  -> sleeps <ms> milliseconds, then 200 JSON:
                    {"path": ..., "slept_ms": <ms>, "instance": AETHER_INSTANCE_ID}
GET /<other>     -> 200 JSON at once (same shape, slept_ms 0).

One thread per connection (HTTP/1.1 keep-alive, Content-Length), and a listen
backlog of 1024: Python's socketserver default is 5, so aetherd opening
`concurrency` (8) upstream connections at once to a fresh instance overflows
it, and the dropped SYNs are retried by TCP only after 1 s, 3 s, ... which
shows up as seconds of latency that have nothing to do with autoscaling.
"""
import json
import os
import re
import socket
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLEEP = re.compile(r"^/sleep/(\d+)$")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY the body
    # waits for a delayed ACK (40 ms) on a keep-alive connection.
    disable_nagle_algorithm = True

    def do_GET(self):
        m = SLEEP.match(self.path)
        ms = int(m.group(1)) if m else 0
        if ms:
            time.sleep(ms / 1000)
        body = json.dumps({
            "path": self.path,
            "slept_ms": ms,
            "instance": os.environ.get("AETHER_INSTANCE_ID", ""),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


class Server(ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True


# Bind first, so READY means the port accepts connections.
server = Server(("0.0.0.0", int(os.environ["AETHER_TRIGGER_PORT"])), Handler)
# The handshake connection stays open for the life of the handler.
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(os.environ["AETHER_SOCKET"])
sock.send(b"READY")
server.serve_forever()
