#!/usr/bin/env python3
"""Test handler that answers the handshake with the wrong bytes."""
import os
import socket
import time

sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(os.environ["AETHER_SOCKET"])
sock.send(b"HELLO")
time.sleep(3600)
