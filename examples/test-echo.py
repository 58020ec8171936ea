#!/usr/bin/env python3
"""Test handler: the original hello.py plus introspection.

GET /<anything>  -> 200 JSON: path, pid as seen inside (1 in its own pid
                    namespace), the AETHER_* environment and the env keys.
GET /oom         -> allocates 200 MB (to be OOM-killed by a smaller cgroup limit).
GET /crash       -> exits with code 3 at once.
"""
import json
import os
import socket
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/crash":
            os._exit(3)
        if self.path == "/oom":
            hog = []
            for _ in range(200):
                hog.append(bytearray(1 << 20))
        body = json.dumps({
            "message": "Hello from Aetherless!",
            "path": self.path,
            "pid": os.getpid(),
            "env": {k: v for k, v in os.environ.items() if k.startswith("AETHER_") or k.startswith("TEST_")},
            "env_keys": sorted(os.environ.keys()),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


print(f"test-echo starting pid={os.getpid()} instance={os.environ.get('AETHER_INSTANCE_ID')}", flush=True)
print("test-echo stderr line", file=sys.stderr, flush=True)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(os.environ["AETHER_SOCKET"])
sock.send(b"READY")

port = int(os.environ.get("AETHER_TRIGGER_PORT", 8080))
HTTPServer(("0.0.0.0", port), Handler).serve_forever()
