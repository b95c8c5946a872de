"""A moto server on 127.0.0.1 with the Identity Store gap-fill installed (the demo's AWS, and HTTP tests).

Run it with ``python -m sandbox.moto_server --port 5000``; point boto3 at the printed endpoint URL.
"""

from __future__ import annotations

import argparse
import signal
import threading

from moto.server import ThreadedMotoServer

from sandbox import moto_ext

HOST = "127.0.0.1"


def start(port: int = 0) -> tuple[ThreadedMotoServer, str]:
    """Start a moto server in a thread (port 0: any free port); return it and its endpoint URL."""
    moto_ext.install()
    server = ThreadedMotoServer(ip_address=HOST, port=port, verbose=False)
    server.start()
    host, bound = server.get_host_and_port()
    return server, f"http://{host}:{bound}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=5000, help="TCP port on 127.0.0.1 (0: any free port)")
    args = parser.parse_args(argv)
    server, endpoint = start(args.port)
    stopping = threading.Event()

    def stop(*_: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"moto server (Identity Store gap-fill installed) listening on {endpoint}", flush=True)
    # a bounded wait lets the signal handler run promptly on every platform
    while not stopping.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
