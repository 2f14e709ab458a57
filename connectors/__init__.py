"""Everything that touches the outside world: record formats, stores, sources and sinks."""

import os

# Arrow's default allocator (mimalloc) keeps freed pages for a while before handing them back;
# over a long ingest those idle pages add up, and peak RSS grew with the input (1 M -> 16 M
# readings: 1.29x; with 0, 1.2x and ~80 MiB less, at no measured cost in speed:
# benchmarks/bench_memory.py). mimalloc reads this when pyarrow loads it, hence here, before
# any pyarrow import; a value the user set wins.
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "0")
