"""``inversescope view``: serve a workdir's view with uvicorn on one socket, and say where."""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_socket(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port); port 0 takes a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(
    workdir: Path, host: str = LOOPBACK, port: int = 8765, torch_threads: int | None = 1
) -> None:
    """Serve the view of ``workdir`` until interrupted; print its URL first (stdout), and a
    warning (stderr) when the server is reachable from other machines."""
    import uvicorn  # deferred: the CLI's other commands need no web server

    from inversescope.view.app import create_app

    sock = open_socket(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    if not is_loopback(host):
        print(
            f"inversescope view: warning: listening on {host}: anyone who can reach port "
            f"{bound} of this machine can read every result under {workdir} (no login)",
            file=sys.stderr,
            flush=True,
        )
    print(
        f"InverseScope view of {workdir} at http://{shown}:{bound}/ (Ctrl-C stops it)", flush=True
    )
    config = uvicorn.Config(
        create_app(workdir, torch_threads), log_level="warning", access_log=False
    )
    uvicorn.Server(config).run(sockets=[sock])
