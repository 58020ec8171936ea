#!/usr/bin/env python3
"""Handler of the end-to-end tests (dataplane/tests/e2e.rs).

GET|POST /crash    -> the process exits at once (code 7) without answering.
GET /hog           -> allocates and touches 300 MB (above a 64 MB limit: OOM kill).
GET /slow?ms=N     -> sleeps N ms (default 3000), then answers 200.
GET /egress?port=P -> connects to port P of its default gateway (aetherd's
                      bridge, on this machine), answers 200 JSON with what it
                      read, or the error (no route when egress is off).
GET /<anything>    -> 200 JSON: message, path, E2E_VERSION, AETHER_INSTANCE_ID, pid.

HTTP/1.1 with Content-Length, so the gateway can keep upstream connections
alive; one thread per connection, so a pooled idle connection never blocks another.
"""
import json
import os
import socket
import struct
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def default_gateway():
    """IPv4 default gateway of this network namespace, or None."""
    with open("/proc/net/route") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000" and int(fields[3], 16) & 2:
                return socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
    return None


def egress(port):
    gateway = default_gateway()
    if gateway is None:
        return {"gateway": None, "error": "no default route"}
    try:
        with socket.create_connection((gateway, port), timeout=2) as conn:
            return {"gateway": gateway, "read": conn.recv(64).decode()}
    except OSError as e:
        return {"gateway": gateway, "error": str(e)}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waits for
    # the ACK of the headers, which a delayed ACK holds for 40 ms per request
    # on a keep-alive connection.
    disable_nagle_algorithm = True

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/crash":
            print("test-e2e: /crash, exiting", flush=True)
            os._exit(7)
        if url.path == "/hog":
            print("test-e2e: /hog, allocating 300 MB", flush=True)
            hog = [bytearray(b"x") * (1 << 20) for _ in range(300)]
            print(f"test-e2e: /hog survived with {len(hog)} MB", flush=True)
        if url.path == "/slow":
            ms = int(parse_qs(url.query).get("ms", ["3000"])[0])
            time.sleep(ms / 1000)
        if url.path == "/egress":
            self.answer(egress(int(parse_qs(url.query)["port"][0])))
            return
        self.answer({
            "message": "Hello from Aetherless!",
            "path": self.path,
            "version": os.environ.get("E2E_VERSION", ""),
            "instance": os.environ.get("AETHER_INSTANCE_ID", ""),
            "pid": os.getpid(),
        })

    def answer(self, doc):
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        # Same paths as GET (POST /crash is a request the gateway must not replay).
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.do_GET()

    def log_message(self, format, *args):
        pass


print(f"test-e2e-handler up: instance={os.environ.get('AETHER_INSTANCE_ID')}", flush=True)
print("test-e2e-handler stderr line", file=sys.stderr, flush=True)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(os.environ["AETHER_SOCKET"])
sock.send(b"READY")

ThreadingHTTPServer(("0.0.0.0", int(os.environ["AETHER_TRIGGER_PORT"])), Handler).serve_forever()
