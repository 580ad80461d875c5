"""uvicorn with a draining shutdown, for socket-activated kbxy.platform units.

Installed into every release by the kbxy.platform.uvicorn role and started as
`<release>/venv/bin/python <release>/kbxy_uvicorn.py <uvicorn arguments>`.

On SIGTERM uvicorn stops accepting and at once closes every connection whose request
it has not read yet. Its event loop accepts all pending connections in one go, so a
connection the kernel handed over just before the signal is reset although its
request is already in the socket buffer; with socket activation the client would
otherwise have waited in the backlog for the next process. This wrapper stops
accepting, lets the loop run KBXY_UVICORN_DRAIN_SECONDS (default 0.5) so those
requests are read and finished, and then runs uvicorn's own graceful shutdown.

The patch sits at module level: uvicorn starts its workers with the "spawn" method,
which imports this file again in every worker.
"""
import asyncio
import os
import sys

import uvicorn.main
import uvicorn.server

DRAIN_SECONDS = float(os.environ.get("KBXY_UVICORN_DRAIN_SECONDS", "0.5"))
_uvicorn_shutdown = uvicorn.server.Server.shutdown


async def _draining_shutdown(self, sockets=None):
    for server in self.servers:
        server.close()
    for sock in sockets or []:
        sock.close()
    if DRAIN_SECONDS > 0:
        await asyncio.sleep(DRAIN_SECONDS)
    await _uvicorn_shutdown(self, sockets=None)


uvicorn.server.Server.shutdown = _draining_shutdown

if __name__ == "__main__":
    sys.exit(uvicorn.main.main(prog_name="uvicorn"))
