"""Windows past their series' watermark that are not final yet: the *shelf*.

Inside a run a window stays open until the watermark passes it by the view's hold as well
(``flows.kernels.windows``), so that disorder inside one input never makes a reading late. But
once the watermark itself has passed a window, in-order readings never reach it again: only a
reading that arrives later than the lateness can. Such windows move from the kernel's hot set
(merged with every batch) to the shelf, in chunks, and are touched again only when the hold
or the run's end makes them final, or when a reading comes back to one of their series.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

import numpy as np

from obsflow.flows.kernels.partials import Partials
from obsflow.flows.kernels.sketch import Sketches

MAX_CHUNKS = 32  # more chunks than this are joined into one (fewer, larger numpy calls)


class Shelf:
    """Chunks of (partials, their sketches), each in (series, window start) order."""

    def __init__(
        self, final_time: Callable[[Partials], np.ndarray], constants: dict[str, float]
    ) -> None:
        self._final_time = final_time
        # Fields the view never reads and that hold one value: stored as zero-stride views.
        self._constants = constants
        self._parts: list[Partials] = []
        self._sketches: list[Sketches] = []
        self._earliest: list[int] = []  # smallest finality time in each chunk

    def __len__(self) -> int:
        return sum(len(p) for p in self._parts)

    def add(self, p: Partials, s: Sketches) -> None:
        if not len(p):
            return
        p = self._slim(p)
        self._parts.append(p)
        self._sketches.append(s)
        self._earliest.append(int(self._final_time(p).min()))
        if len(self._parts) > MAX_CHUNKS:
            p, s = self.all()
            self._parts, self._sketches = [p], [s]
            self._earliest = [int(self._final_time(p).min())]

    def all(self) -> tuple[Partials, Sketches]:
        """Every shelved window (chunks one after the other), and their sketches."""
        if not self._parts:
            return Partials.empty(), Sketches.empty()
        if len(self._parts) == 1:
            return self._parts[0], self._sketches[0]
        return self._concat(self._parts), Sketches.concat_all(self._sketches)

    def pull(self, series: np.ndarray) -> tuple[Partials, Sketches]:
        """Take the windows of the flagged series (a mask over series ids) off the shelf."""
        return self._remove(lambda p: series[p.sid])

    def take_final(self, upto: np.ndarray) -> tuple[Partials, Sketches]:
        """Take the windows whose finality time is at or before ``upto`` of their series."""
        top = int(upto.max()) if upto.size else None
        return self._remove(lambda p: self._final_time(p) <= upto[p.sid], top)

    def _remove(
        self, which: Callable[[Partials], np.ndarray], top: int | None = None
    ) -> tuple[Partials, Sketches]:
        out_p: list[Partials] = []
        out_s: list[Sketches] = []
        keep_p: list[Partials] = []
        keep_s: list[Sketches] = []
        earliest: list[int] = []
        for p, s, lo in zip(self._parts, self._sketches, self._earliest, strict=True):
            mask = None if top is not None and lo > top else which(p)  # (none can be final)
            if mask is None or not mask.any():
                keep_p.append(p)
                keep_s.append(s)
                earliest.append(lo)
                continue
            if mask.all():
                out_p.append(p)
                out_s.append(s)
                continue
            out_p.append(self._take(p, mask))
            out_s.append(s.select(mask))
            rest = self._take(p, ~mask)
            keep_p.append(rest)
            keep_s.append(s.select(~mask))
            earliest.append(int(self._final_time(rest).min()))
        self._parts, self._sketches, self._earliest = keep_p, keep_s, earliest
        if not out_p:
            return Partials.empty(), Sketches.empty()
        return self._concat(out_p), Sketches.concat_all(out_s)

    def _slim(self, p: Partials) -> Partials:
        n = len(p)
        for name, value in self._constants.items():
            dtype = getattr(p, name).dtype
            setattr(p, name, np.broadcast_to(np.array(value, dtype), (n,)))
        return p

    def _take(self, p: Partials, mask: np.ndarray) -> Partials:
        """``p.take(mask)``, without materializing the constant fields."""
        return self._slim(Partials(*(self._field(p, f.name, mask) for f in fields(Partials))))

    def _concat(self, parts: list[Partials]) -> Partials:
        if len(parts) == 1:
            return parts[0]
        return self._slim(
            Partials(
                *(np.concatenate([self._field(p, f.name) for p in parts]) for f in fields(Partials))
            )
        )

    def _field(self, p: Partials, name: str, mask: np.ndarray | None = None) -> np.ndarray:
        """A field (``mask``: its flagged elements); empty when constant (``_slim`` sets it)."""
        a: np.ndarray = getattr(p, name)
        if name in self._constants:
            return a[:0]
        return a if mask is None else a[mask]
