"""``--workers N`` for the benchmark's service as ``meterapi serve`` runs it: uvicorn's
supervisor with each worker accepting on its own socket (``meterapi.cli.workers``), and the
benchmark's quiet logging instead of ``serve``'s access log.

    python -m bench.workers APP --port PORT --workers N
"""

from __future__ import annotations

import argparse

from meterapi.cli.workers import serve_workers


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.workers")
    parser.add_argument("app", help="an app factory's import string")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    serve_workers(
        args.app, host=args.host, port=args.port, workers=args.workers, factory=True,
        access_log=False, log_level="warning", timeout_graceful_shutdown=20,
        timeout_worker_healthcheck=120,
    )  # fmt: skip


if __name__ == "__main__":
    main()
