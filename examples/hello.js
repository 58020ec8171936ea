#!/usr/bin/env node
// examples/hello.js: the quickstart handler (hello.py) for Node 20, no npm packages.
//
// Handler protocol: serve HTTP on 0.0.0.0:$AETHER_TRIGGER_PORT, then connect to
// the unix socket $AETHER_SOCKET and send exactly the 5 bytes "READY" (the
// listener is bound first, so READY means the port already accepts
// connections). Every GET answers, byte for byte like hello.py:
//   {"message": "Hello from Aetherless!", "path": "<request target>"}
// Other methods get 501, as from Python's BaseHTTPRequestHandler. Keep-alive
// is Node's default. Without AETHER_SOCKET (run by hand) the handshake is
// skipped. Unlike hello.py, Node's strict parser answers 400 to raw non-ASCII
// bytes in the request target and to HTTP/1.1 requests without a Host header.
'use strict';

const http = require('http');
const net = require('net');

// json.dumps(s) with ensure_ascii=True: Node, like Python's http.server,
// hands the request target over as ISO-8859-1 text, so every character here is
// < 0x100 and non-ASCII ones become \u00xx.
function pyJsonString(s) {
  let out = '"';
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (c === 0x08) out += '\\b';
    else if (c === 0x0c) out += '\\f';
    else if (c < 0x20 || c > 0x7e && c !== 0x7f) {
      if (c > 0xffff) {
        const v = c - 0x10000;
        out += '\\u' + (0xd800 + (v >> 10)).toString(16) + '\\u' + (0xdc00 + (v & 0x3ff)).toString(16);
      } else {
        out += '\\u' + c.toString(16).padStart(4, '0');
      }
    } else out += ch;
  }
  return out + '"';
}

const server = http.createServer((req, res) => {
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    const text = 'Unsupported method\n';
    res.writeHead(501, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(text) });
    res.end(text);
    return;
  }
  const body = '{"message": "Hello from Aetherless!", "path": ' + pyJsonString(req.url) + '}';
  res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body, 'latin1') });
  res.end(body, 'latin1');
});

const port = Number.parseInt(process.env.AETHER_TRIGGER_PORT || '8080', 10);
if (!Number.isInteger(port) || port < 1 || port > 65535) {
  console.error(`hello.js: bad AETHER_TRIGGER_PORT ${JSON.stringify(process.env.AETHER_TRIGGER_PORT)}`);
  process.exit(2);
}

server.on('error', (err) => {
  console.error(`hello.js: cannot serve on 0.0.0.0:${port}: ${err.message}`);
  process.exit(1);
});

let handshake = null; // kept open while serving, as hello.py keeps its socket
server.listen(port, '0.0.0.0', () => {
  const path = process.env.AETHER_SOCKET;
  if (!path) return;
  handshake = net.createConnection(path, () => handshake.write('READY'));
  handshake.on('error', (err) => {
    console.error(`hello.js: handshake socket ${path}: ${err.message}`);
    process.exit(1);
  });
});
