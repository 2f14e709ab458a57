"""A deterministic instrument simulator, as a Bytewax source and as a file writer.

``sim://?sources=4&rate=10&duration=60s&seed=1`` describes N instruments, each sampling every
channel at ``rate`` Hz for ``duration`` of event time from ``start``. Signals are realistic
enough to exercise views: a slow drift, a daily cycle, Gaussian noise, occasional spikes and
occasional gaps (dropped samples, whose seq numbers are skipped as a real instrument's would be).
A seq counts samples since the Unix epoch at the instrument's rate, as a counter that never
resets would: simulations of one source starting at different times never share a seq.

Everything is a pure function of (seed, source index, block index), so any block can be rebuilt
on its own: that is what makes resume exact and the output identical for any worker count.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass, fields
from datetime import datetime
from fractions import Fraction

import numpy as np
import pyarrow as pa
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from obsflow.connectors.batch import RawBatch
from obsflow.connectors.errors import ConfigError
from obsflow.connectors.formats.parsing import parse_duration, to_utc
from obsflow.connectors.formats.schema import TIME_TYPE
from obsflow.connectors.ids import check_id

BLOCK_SAMPLES = 16_384  # samples per channel per generated block
MAX_READINGS = 10**10  # refuse absurd requests before generating anything
_CHANNEL_BASE = {"temperature": (12.0, 0.8), "pressure": (1013.0, 2.0), "salinity": (35.0, 0.1)}


@dataclass(frozen=True)
class SimSpec:
    """What to simulate. All readings are a pure function of these fields."""

    sources: int = 4
    channels: tuple[str, ...] = ("temperature", "pressure")
    rate: float = 10.0  # samples per second per channel
    duration: float = 60.0  # seconds of event time
    start: str = "2026-01-01T00:00:00Z"
    seed: int = 0
    spike_prob: float = 0.001
    gap_prob: float = 0.05  # chance that a block has a gap
    payloads: tuple[str, ...] = ()  # e.g. ("frame:512x512:uint16", "waveform:4096:float32")
    payload_rate: float = 1.0  # payloads per second per source and payload channel

    def __post_init__(self) -> None:
        if not 1 <= self.sources <= 100_000:
            raise ConfigError(f"sources must be 1..100000, not {self.sources}")
        if not self.channels:
            raise ConfigError("at least one channel is needed")
        for ch in self.channels:
            check_id(ch, kind="channel id")
        if not (0 < self.rate <= 1e6):
            raise ConfigError(f"rate must be in (0, 1e6] Hz, not {self.rate}")
        if self.readings > MAX_READINGS:
            raise ConfigError(f"that is {self.readings:,} readings; the limit is {MAX_READINGS:,}")
        self.start_ns  # noqa: B018 - validates the start time now, not in a worker
        for p in self.payload_specs:
            if p.name in self.channels:
                raise ConfigError(f"payload channel {p.name!r} is also a scalar channel")
        if self.payloads and not (0 < self.payload_rate <= 1e4):
            raise ConfigError(f"payload_rate must be in (0, 1e4] Hz, not {self.payload_rate}")

    @property
    def payload_specs(self) -> tuple[PayloadSpec, ...]:
        return tuple(PayloadSpec.parse(p) for p in self.payloads)

    @property
    def samples(self) -> int:
        """Samples per channel per source."""
        return round(self.duration * self.rate)

    @property
    def readings(self) -> int:
        """Upper bound on readings (before gaps)."""
        return self.samples * self.sources * len(self.channels)

    @property
    def start_ns(self) -> int:
        return int(to_utc(self.start, "start time").value)

    def source_id(self, i: int) -> str:
        return f"sim-{i:03d}"

    @classmethod
    def from_url(cls, url: str) -> SimSpec:
        """Parse ``sim://?sources=4&channels=a,b&rate=10&duration=60s&seed=1&start=ISO``."""
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "sim":
            raise ConfigError(f"{url!r} is not a sim:// URL")
        known = {f.name for f in fields(cls)}
        args: dict[str, object] = {}
        for key, value in urllib.parse.parse_qsl(parsed.query, keep_blank_values=True):
            if key not in known:
                raise ConfigError(
                    f"sim:// parameter {key!r} unknown; use {', '.join(sorted(known))}"
                )
            args[key] = value
        return cls.from_strings(args)

    @classmethod
    def from_strings(cls, args: dict[str, object]) -> SimSpec:
        """Build from text values (URL query or CLI options)."""
        out: dict[str, object] = {}
        try:
            for key, value in args.items():
                if value is None:
                    continue
                text = str(value)
                if key in ("sources", "seed"):
                    out[key] = int(text)
                elif key in ("rate", "spike_prob", "gap_prob"):
                    out[key] = float(text)
                elif key == "duration":
                    out[key] = parse_duration(text)
                elif key in ("channels", "payloads"):
                    out[key] = tuple(c.strip() for c in text.split(",") if c.strip())
                elif key == "payload_rate":
                    out[key] = float(text)
                else:
                    out[key] = text
        except ValueError as exc:
            raise ConfigError(f"bad simulator setting: {exc}") from None
        return cls(**out)  # type: ignore[arg-type]

    def samples_before(self, rate: float) -> int:
        """Samples at ``rate`` Hz from the Unix epoch to ``start`` (exact: no float rounding)."""
        return int(Fraction(self.start_ns, 10**9) * Fraction(rate))

    @property
    def blocks(self) -> int:
        return -(-self.samples // BLOCK_SAMPLES)


def generate_block(spec: SimSpec, source: int, block: int) -> pa.Table:
    """Readings of one source for samples [block·B, (block+1)·B), all channels, in time order."""
    lo = block * BLOCK_SAMPLES
    hi = min(spec.samples, lo + BLOCK_SAMPLES)
    k = np.arange(lo, hi, dtype=np.int64)
    rng = np.random.default_rng([spec.seed, source, block])
    keep = np.ones(k.size, dtype=bool)
    if k.size and rng.random() < spec.gap_prob:  # one gap of up to 10 % of the block
        length = int(rng.integers(1, max(2, k.size // 10)))
        begin = int(rng.integers(0, max(1, k.size - length)))
        keep[begin : begin + length] = False
    k = k[keep]
    t_s = k / spec.rate
    time_ns = spec.start_ns + np.round(t_s * 1e9).astype(np.int64)
    n_ch = len(spec.channels) + len(spec.payloads)  # payload channels take the last residues
    cols: dict[str, list[np.ndarray]] = {"seq": [], "time": [], "channel": [], "value": []}
    for c, name in enumerate(spec.channels):
        base, scale = _CHANNEL_BASE.get(name, (0.0, 1.0))
        # Per-source offsets come from a generator that ignores the block, so a source's
        # level stays the same across blocks.
        level = np.random.default_rng([spec.seed, source, 10**6 + c]).normal(0.0, 3.0 * scale)
        signal = (
            base
            + level
            + scale * 0.02 * (t_s / 3600.0)  # drift: 2 % of the scale per hour
            + scale * np.sin(2 * np.pi * t_s / 86400.0)  # daily cycle
            + rng.normal(0.0, 0.1 * scale, k.size)
        )
        spikes = rng.random(k.size) < spec.spike_prob
        signal[spikes] += rng.choice([-1.0, 1.0], int(spikes.sum())) * 20.0 * scale
        cols["seq"].append((spec.samples_before(spec.rate) + k) * n_ch + c)
        cols["time"].append(time_ns)
        cols["channel"].append(np.full(k.size, c, dtype=np.int32))
        cols["value"].append(signal)
    order = np.argsort(np.concatenate(cols["seq"]), kind="stable")  # time order, then channel
    channel_idx = np.concatenate(cols["channel"])[order]
    return pa.table(
        {
            "source": pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(order.size, dtype=np.int32)), pa.array([spec.source_id(source)])
            ).cast(pa.string()),
            "seq": pa.array(np.concatenate(cols["seq"])[order]),
            "time": pa.array(np.concatenate(cols["time"])[order]).cast(TIME_TYPE),
            "channel": pa.DictionaryArray.from_arrays(
                pa.array(channel_idx), pa.array(list(spec.channels))
            ).cast(pa.string()),
            "value": pa.array(np.concatenate(cols["value"])[order]),
        }
    )


def generate_payload_block(spec: SimSpec, source: int, block: int) -> pa.Table | None:
    """Payload readings of one source in the event-time span of scalar block ``block``.

    Each payload channel gets its own seq residue (after the scalar channels), so seq numbers
    stay unique per source. Frames are Poisson counts around a drifting spot; waveforms a
    noisy damped sine.
    """
    specs = spec.payload_specs
    if not specs:
        return None
    lo = block * BLOCK_SAMPLES / spec.rate
    hi = min(spec.samples, (block + 1) * BLOCK_SAMPLES) / spec.rate
    j = np.arange(
        math.ceil(lo * spec.payload_rate - 1e-9), math.ceil(hi * spec.payload_rate - 1e-9)
    )
    if j.size == 0:
        return None
    n_ch = len(spec.channels) + len(specs)
    tables = []
    for c, p in enumerate(specs):
        arrays = [
            p.make(np.random.default_rng([spec.seed, source, int(k), 7 + c]), int(k)) for k in j
        ]
        times = spec.start_ns + np.round(j / spec.payload_rate * 1e9).astype(np.int64)
        tables.append(
            pa.table(
                {
                    "source": pa.array([spec.source_id(source)] * j.size, pa.string()),
                    "seq": pa.array(
                        (spec.samples_before(spec.payload_rate) + j) * n_ch
                        + len(spec.channels)
                        + c,
                        pa.int64(),
                    ),
                    "time": pa.array(times).cast(TIME_TYPE),
                    "channel": pa.array([p.name] * j.size, pa.string()),
                    "value": pa.nulls(j.size, pa.float64()),
                    # Raw little-endian bytes with dtype and shape: one column type for all.
                    "payload": pa.array(
                        [a.astype(a.dtype.newbyteorder("<")).tobytes() for a in arrays],
                        pa.large_binary(),
                    ),
                    "payload_dtype": pa.array([p.dtype] * j.size, pa.string()),
                    "payload_shape": pa.array([list(p.shape)] * j.size, pa.list_(pa.int64())),
                }
            )
        )
    return pa.concat_tables(tables, promote_options="default")


def sim_block(spec: SimSpec, source: int, block: int) -> pa.Table:
    """Scalar and payload readings of one block."""
    scalars = generate_block(spec, source, block)
    payloads = generate_payload_block(spec, source, block)
    return (
        scalars
        if payloads is None
        else pa.concat_tables([scalars, payloads], promote_options="default")
    )


@dataclass(frozen=True)
class PayloadSpec:
    """``name:shape:dtype``, e.g. ``frame:512x512:uint16`` or ``waveform:4096:float32``."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def parse(cls, text: str) -> PayloadSpec:
        parts = text.split(":")
        if len(parts) != 3:
            raise ConfigError(f"payload {text!r} — use name:shape:dtype, e.g. frame:512x512:uint16")
        name, shape_text, dtype = parts
        check_id(name, kind="payload channel")
        try:
            shape = tuple(int(x) for x in shape_text.split("x"))
        except ValueError:
            raise ConfigError(f"payload shape {shape_text!r} — use e.g. 512x512") from None
        if dtype not in ("uint8", "uint16", "int16", "int32", "float32", "float64"):
            raise ConfigError(
                f"payload dtype {dtype!r} — use uint8, uint16, int16, int32, float32 or float64"
            )
        size = math.prod(shape) * np.dtype(dtype).itemsize
        if not shape or min(shape) < 1 or size > 256 << 20:
            raise ConfigError(f"payload shape {shape} must be positive and at most 256 MiB")
        return cls(name, shape, dtype)

    def make(self, rng: np.random.Generator, k: int) -> np.ndarray:
        if np.issubdtype(np.dtype(self.dtype), np.integer):
            grid = np.indices(self.shape, dtype=np.float32)
            center = [
                (0.3 + 0.4 * ((k * 0.07 + 0.2 * i) % 1.0)) * n for i, n in enumerate(self.shape)
            ]
            r2 = sum((g - c) ** 2 for g, c in zip(grid, center, strict=True))
            lam = 20.0 + 200.0 * np.exp(-r2 / (2 * (0.05 * max(self.shape)) ** 2))
            top = np.iinfo(np.dtype(self.dtype)).max
            frame: np.ndarray = np.minimum(rng.poisson(lam), top).astype(self.dtype)
            return frame
        t = np.arange(math.prod(self.shape), dtype=np.float64) / 1000.0
        wave = np.sin(2 * np.pi * (5 + k % 7) * t) * np.exp(-t) + rng.normal(0, 0.05, t.size)
        out: np.ndarray = wave.reshape(self.shape).astype(self.dtype)
        return out


def generate(spec: SimSpec) -> pa.Table:
    """The whole simulation as one table (for ``obsflow simulate`` and tests)."""
    return pa.concat_tables(
        [sim_block(spec, s, b) for s in range(spec.sources) for b in range(spec.blocks)],
        promote_options="default",
    )


class _SimPartition(StatefulSourcePartition[RawBatch, int]):
    def __init__(self, url: str, spec: SimSpec, source: int, resume: int | None) -> None:
        self._url, self._spec, self._source = url, spec, source
        self._block = resume or 0

    def next_batch(self) -> list[RawBatch]:
        if self._block >= self._spec.blocks:
            raise StopIteration
        table = sim_block(self._spec, self._source, self._block)
        origin = f"{self._url}#{self._spec.source_id(self._source)}"
        batch = RawBatch(origin, self._block * BLOCK_SAMPLES * len(self._spec.channels), table)
        self._block += 1
        return [batch]

    def next_awake(self) -> datetime | None:
        return None

    def snapshot(self) -> int:
        return self._block


class SimSource(FixedPartitionedSource[RawBatch, int]):
    """Simulated instruments; one partition per source, emitted block by block."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.spec = SimSpec.from_url(url)

    def list_parts(self) -> list[str]:
        return [f"{self.url}#{i}" for i in range(self.spec.sources)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _SimPartition:
        index = int(for_part.rsplit("#", 1)[1])
        return _SimPartition(self.url, self.spec, index, resume_state)
