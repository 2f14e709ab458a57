"""View definition files: parsing, defaults, and errors that name the view and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from obsflow.connectors.errors import ConfigError
from obsflow.flows.kernels.viewdef import ViewDef, load_views, parse_views, quantile_of

GOOD = """
[[view]]
name = "stats_1m"
kind = "tumbling"
size = "1m"
aggregates = ["count", "mean", "min", "max", "std", "p90"]

[[view]]
name = "hop"
kind = "hopping"
size = "1m"
step = "10s"
lateness = "5s"

[[view]]
name = "bursts"
kind = "session"
gap = "500ms"
aggregates = ["count", "first", "last"]
"""


def test_a_good_file_parses_to_nanoseconds() -> None:
    a, b, c = parse_views(GOOD)
    assert (a.name, a.kind, a.size, a.lateness) == ("stats_1m", "tumbling", 60 * 10**9, 0)
    assert a.quantiles == {"p90": 0.9}
    assert (b.size, b.step, b.lateness) == (60 * 10**9, 10 * 10**9, 5 * 10**9)
    assert b.aggregates == ("count", "mean", "min", "max", "std")  # the default list
    assert (c.kind, c.gap) == ("session", 500 * 10**6)


def test_hash_follows_the_definition_not_the_name() -> None:
    base = ViewDef("a", "tumbling", size=10**9)
    assert base.hash == ViewDef("b", "tumbling", size=10**9).hash
    assert base.hash != ViewDef("a", "tumbling", size=2 * 10**9).hash
    assert base.hash != ViewDef("a", "tumbling", size=10**9, lateness=1).hash


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[[view]]\nname = "a b"\nsize = "1s"', r"view name 'a b'"),
        ('[[view]]\nname = "v"\nkind = "sliding"\nsize = "1s"', r"view 'v': kind 'sliding'"),
        ('[[view]]\nname = "v"\nkind = "tumbling"', r"view 'v': a tumbling view needs size"),
        ('[[view]]\nname = "v"\nsize = "soon"', r"view 'v': size"),
        ('[[view]]\nname = "v"\nkind = "hopping"\nsize = "1m"\nstep = "7s"', r"divide size"),
        ('[[view]]\nname = "v"\nkind = "session"', r"view 'v': a session view needs gap"),
        (
            '[[view]]\nname = "v"\nsize = "1s"\naggregates = ["median"]',
            r"unknown aggregate 'median'",
        ),
        ('[[view]]\nname = "v"\nsize = "1s"\naggregates = []', r"non-empty list"),
        ('[[view]]\nname = "v"\nsize = "1s"\ncolour = "red"', r"unknown field\(s\) \['colour'\]"),
        ('[[view]]\nname = "v"\nsize = "1s"\n[[view]]\nname = "v"\nsize = "2s"', r"unique"),
        ("[[view]\n", r"not valid TOML"),
        ("", r"defines no \[\[view\]\]"),
    ],
)
def test_bad_files_get_a_clear_error(toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_views(toml)


def test_quantile_names() -> None:
    assert quantile_of("p50") == 0.5
    assert quantile_of("p99.9") == pytest.approx(0.999)
    assert quantile_of("max") is None


def test_load_views_reads_a_file_and_says_when_it_is_missing(tmp_path: Path) -> None:
    path = tmp_path / "views.toml"
    path.write_text(GOOD)
    assert [v.name for v in load_views(path)] == ["stats_1m", "hop", "bursts"]
    with pytest.raises(ConfigError, match="does not exist"):
        load_views(tmp_path / "nope.toml")
