"""The Stripe emulator in a process of its own, quiet (no access log), for the benchmarks.

python -m bench.emulator --port 12111
"""

from __future__ import annotations

import argparse

import uvicorn

from meterapi.stripe_emulator import create_emulator_app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        create_emulator_app(),
        host="127.0.0.1",
        port=args.port,
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
