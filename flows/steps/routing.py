"""Keys for capture partitions that spread evenly over Bytewax workers.

Bytewax 0.21 sends a keyed item to worker ``siphash13(key + b"\\xff") % workers``: Rust's
default hasher (SipHash-1-3, zero keys) over the key string (``tests/flows/test_routing.py``
checks this against real dataflows). The plain keys ``"0000"``..``"0003"`` of a capture's four
partitions land 3:1 on two workers, so one worker did three quarters of the capture and view
work. ``partition_key(p)`` is the first of ``"0003"``, ``"0003.1"``, ``"0003.2"``, ... that goes
to worker ``p % 8``: with 1, 2, 4 or 8 workers every worker gets an equal share.
"""

from __future__ import annotations

from functools import cache

_M = (1 << 64) - 1
BALANCED_FOR = 8  # keys spread evenly over any number of workers dividing this


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M


def siphash13(data: bytes) -> int:
    """SipHash-1-3 with zero keys, as Rust's ``DefaultHasher::new()``."""
    v0, v1 = 0x736F6D6570736575, 0x646F72616E646F6D
    v2, v3 = 0x6C7967656E657261, 0x7465646279746573

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & _M
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _M
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _M
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _M
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    whole = len(data) - len(data) % 8
    for i in range(0, whole, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        rounds(1)
        v0 ^= m
    last = ((len(data) & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= last
    rounds(1)
    v0 ^= last
    v2 ^= 0xFF
    rounds(3)
    return v0 ^ v1 ^ v2 ^ v3


def worker_of(key: str, workers: int) -> int:
    """The worker Bytewax routes ``key`` to, out of ``workers`` (all processes together)."""
    return siphash13(key.encode() + b"\xff") % workers


def part_of_key(key: str) -> int:
    """The partition number a key names (``"0003"`` or ``"0003.13"``: 3)."""
    return int(key.split(".", 1)[0])


@cache
def partition_key(part: int) -> str:
    """The Bytewax key of capture partition ``part`` (see the module docstring)."""
    base = f"{part:04d}"
    want = part % BALANCED_FOR
    key, n = base, 0
    while worker_of(key, BALANCED_FOR) != want:
        n += 1
        key = f"{base}.{n}"
    return key
