"""Pure parts of the broker clients: NATS subject overlap (what ``--stream`` is checked with)."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from obsflow.connectors.sources.brokers.nats import subjects_overlap


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("obs.a", "obs.a", True),
        ("obs.a", "obs.b", False),
        ("obs.>", "obs.a.b", True),
        ("obs.>", "other.a", False),
        ("obs.*", "obs.a.b", False),
        ("obs.*", "obs.a", True),
        ("obs.*.x", "obs.a.*", True),
        ("obs", "obs.a", False),
        (">", "anything.at.all", True),
    ],
)
def test_subjects_overlap(a: str, b: str, overlap: bool) -> None:
    assert subjects_overlap(a, b) is overlap
    assert subjects_overlap(b, a) is overlap


def matcher(subject_filter: str) -> re.Pattern[str]:
    """A NATS filter as a regular expression: ``*`` one token, ``>`` one or more."""
    parts = [{"*": r"[^.]+", ">": r".+"}.get(t, re.escape(t)) for t in subject_filter.split(".")]
    return re.compile(r"\.".join(parts))


CONCRETE = [
    ".".join(t) for n in range(1, 6) for t in itertools.product("abc", repeat=n)
]  # every subject of up to 5 tokens of a, b, c
filters = st.builds(
    lambda body, tail: ".".join(body + tail),
    st.lists(st.sampled_from(["a", "b", "*"]), min_size=1, max_size=3),
    st.sampled_from([[], [">"]]),
)


@given(filters, filters)
def test_overlap_is_whether_some_subject_matches_both(x: str, y: str) -> None:
    """Oracle: brute force over concrete subjects, matched by regular expressions."""
    mx, my = matcher(x), matcher(y)
    both = any(mx.fullmatch(s) and my.fullmatch(s) for s in CONCRETE)
    assert subjects_overlap(x, y) is both
