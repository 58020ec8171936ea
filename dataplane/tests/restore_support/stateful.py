#!/usr/bin/env python3
"""Restore test handler: state, the restored signal, and a held connection.

GET /<anything> -> 200, body "count=N restored=R held=H pid=P" where
  N counts requests this process image served (warm-up requests included),
  R counts SIGCONTs received (aetherd's "you were restored" signal),
  H is "ok" when the loopback TCP connection opened at start-up still
    carries a ping both ways, "off" when HOLD_CONN is not set, else the error.
GET /sleep/MS sleeps MS milliseconds first.
"""
import os
import signal
import socket
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

COUNT = 0
RESTORED = 0
HELD = None


def on_restore(signum, frame):
    global RESTORED
    RESTORED += 1


signal.signal(signal.SIGCONT, on_restore)

if os.environ.get("HOLD_CONN") == "1":
    # A connection held open across the dump: both ends in this process.
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(1)
    client = socket.create_connection(lst.getsockname())
    server_side, _ = lst.accept()
    HELD = (client, server_side)


def held_status():
    if HELD is None:
        return "off"
    client, server_side = HELD
    try:
        client.settimeout(2)
        server_side.settimeout(2)
        client.sendall(b"ping")
        got = server_side.recv(4)
        server_side.sendall(got)
        back = client.recv(4)
        return "ok" if back == b"ping" else "bad:%r" % back
    except OSError as e:
        return "err:%s" % e.__class__.__name__


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        global COUNT
        COUNT += 1
        if self.path.startswith("/sleep/"):
            time.sleep(int(self.path.split("/")[2]) / 1000.0)
        body = (
            f"count={COUNT} restored={RESTORED} held={held_status()} pid={os.getpid()}"
        ).encode()
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
