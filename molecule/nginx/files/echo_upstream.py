"""Stand-in for the uvicorn app: answers every request with JSON describing it.

Listens on a unix socket and on TCP 127.0.0.1:<port> (both are upstream
servers of the test site); a third argument names the instance in every answer
("upstream"), so a test can tell which upstream nginx reached. Like uvicorn, it
closes idle keep-alive connections after 5 seconds. A "sleep=<seconds>" query
parameter (at most 10) delays the answer, to test nginx's read timeouts.
"""
import http.server
import itertools
import json
import os
import socketserver
import sys
import threading
import time
import urllib.parse

SOCKET = sys.argv[1] if len(sys.argv) > 1 else "/run/echo/echo.sock"
TCP_PORT = int(sys.argv[2]) if len(sys.argv) > 2 else 8001
UPSTREAM = sys.argv[3] if len(sys.argv) > 3 else "main"
CONNECTIONS = itertools.count(1)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # uvicorn's --timeout-keep-alive default

    def setup(self):
        super().setup()
        # one handler per connection: numbers the upstream connection, so a
        # client can tell whether nginx reused a cached one
        self.connection_number = next(CONNECTIONS)

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        delay = min(float(query.get("sleep", ["0"])[0]), 10.0)
        if delay > 0:
            time.sleep(delay)
        payload = json.dumps({
            "upstream": UPSTREAM,
            "method": self.command,
            "path": self.path,
            "listener": self.server.listener,
            "connection": f"{self.server.listener}-{self.connection_number}",
            "x_forwarded_for": self.headers.get("X-Forwarded-For"),
            "x_real_ip": self.headers.get("X-Real-IP"),
            "x_forwarded_proto": self.headers.get("X-Forwarded-Proto"),
            "host": self.headers.get("Host"),
            "body_length": len(body),
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def address_string(self):
        return str(self.client_address or "unix")

    def log_message(self, *args):
        pass


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    listener = "unix"


class TCPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    listener = "tcp"


if os.path.exists(SOCKET):
    os.unlink(SOCKET)
unix_server = UnixServer(SOCKET, Handler)
os.chmod(SOCKET, 0o666)
tcp_server = TCPServer(("127.0.0.1", TCP_PORT), Handler)
threading.Thread(target=tcp_server.serve_forever, daemon=True).start()
unix_server.serve_forever()
