#!/usr/bin/env python3
# /opt/handlers/hello.py
import os, socket, json
from http.server import HTTPServer, BaseHTTPRequestHandler

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.end_headers()
        response = {'message': 'Hello from Aetherless!', 'path': self.path}
        self.wfile.write(json.dumps(response).encode())
    
    def log_message(self, format, *args):
        pass  # Suppress logs

# Connect to orchestrator and signal ready
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(os.environ['AETHER_SOCKET'])
sock.send(b'READY')

# Start serving
port = int(os.environ.get('AETHER_TRIGGER_PORT', 8080))
HTTPServer(('0.0.0.0', port), Handler).serve_forever()
