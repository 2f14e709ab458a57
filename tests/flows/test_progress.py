"""Progress lines on an injected clock: rates since the previous line, percentage and ETA,
and the last line's reading time, exactly."""

from __future__ import annotations

from obsflow.flows.steps.summary import Counts, Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_lines_give_the_rate_since_the_previous_line_and_an_eta() -> None:
    clock = Clock()
    progress = Progress("replay", 4000, clock=clock)
    clock.now += 2.0
    first = progress.line(Counts(input=1600, accepted=1600))
    assert first == (
        "[replay] 1,600 input · 1,600 accepted · 0 rejected · 0 duplicates · 800 readings/s"
        " · 40% · ETA 3 s"
    )
    clock.now += 2.0  # the rate over these 2 s, not since the start
    second = progress.line(Counts(input=2000, accepted=1900, duplicates=100))
    assert second.endswith(" · 200 readings/s · 50% · ETA 4 s"), second
    clock.now += 1.5
    last = progress.line(Counts(input=4000, accepted=3900, duplicates=100), final=True)
    assert last.endswith(" · all read in 5.5 s, committing"), last
    assert progress.lines == 3
