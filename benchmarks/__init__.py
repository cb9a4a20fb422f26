"""epalm's benchmarks. The performance suite (``python -m benchmarks``) is ``SUITE``; each of its
members also runs alone as ``python -m benchmarks.NAME``. docs/benchmarks.md has the numbers."""

SUITE = (
    "throughput",
    "utilization",
    "injection",
    "generation",
    "memory",
    "scaling",
    "adapters",
    "connector_cost",
)
