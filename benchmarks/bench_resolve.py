"""How long resolving an already-cached model takes, with every network connection refused.

    python -m benchmarks.bench_resolve [--repeat 5] [NAME ...]

Builds each offline model first if needed (not timed), then times ``resolve(name)`` with
``socket.connect`` patched to fail, so any network access would show as an error. The last
column is the full re-hash that runs only when a file's modification time moved.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from contextlib import contextmanager

from epalm.zoo import offline_models, resolve
from epalm.zoo.cache import verify


@contextmanager
def no_network():
    def refuse(self, address):
        raise ConnectionRefusedError(f"network access during a cached resolve: {address}")

    original = socket.socket.connect
    socket.socket.connect = refuse
    try:
        yield
    finally:
        socket.socket.connect = original


def time_resolve(name: str, repeat: int) -> list[float]:
    resolve(name)  # build or verify once, untimed
    times = []
    with no_network():
        for _ in range(repeat):
            start = time.perf_counter()
            resolve(name)
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", default=[m.name for m in offline_models()])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(
        "| model | size on disk | cached resolve, median (ms) | max (ms) | full sha256 re-check (ms) |"
    )
    print("|---|---|---|---|---|")
    for name in args.names:
        times = time_resolve(name, args.repeat)
        entry = resolve(name)
        size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
        start = time.perf_counter()
        assert verify(entry) is None
        check = time.perf_counter() - start
        print(
            f"| {name} | {size / 1e6:.0f} MB | {1e3 * statistics.median(times):.1f} "
            f"| {1e3 * max(times):.1f} | {1e3 * check:.0f} |"
        )


if __name__ == "__main__":
    main()
