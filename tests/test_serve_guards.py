"""``obsflow serve`` closed to other sites (issue: second round): the Host allow-list, the
Origin check, the token cookie; and bounded row responses. Against a real server process
(``tests.test_serve.serving``) on a small store."""

from __future__ import annotations

from pathlib import Path

import httpx
import pandas as pd
import pytest

from obsflow.flows.explore.explorer import open_store
from tests.test_serve import TOKEN, VIEWS, by_keys, decoded, pages_of, run_file, serving

pytestmark = pytest.mark.integration  # a server process (tests/conftest.py)

BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("guards")
    s = open_store(str(folder / "store"))
    for r in range(3):  # 3 commits: 3,000 readings, 2 late, 2 dead letters
        s.ingest(str(run_file(folder, r)), capture="obs", views=VIEWS)
    return folder / "store"


def test_a_foreign_host_is_refused_and_allow_host_admits_one(store: Path) -> None:
    with serving(store, "--allow-host", "obs.lab.example") as base:
        port = base.rsplit(":", 1)[1]
        for host in (
            "attacker.example",
            f"attacker.example:{port}",
            "localhost.evil",
            "127.0.0.1.nip.io",
        ):
            r = httpx.get(f"{base}/api/views", headers={"Host": host}, timeout=10)
            assert r.status_code == 400, host
            assert "--allow-host" in r.text
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            "localhost",
            f"obs.lab.example:{port}",
        ):
            r = httpx.get(f"{base}/api/views", headers={"Host": host}, timeout=10)
            assert r.status_code == 200, host
        # The SSE route and the pages too.
        r = httpx.get(
            f"{base}/api/views/v1s/events", headers={"Host": "attacker.example"}, timeout=10
        )
        assert r.status_code == 400
        assert httpx.get(f"{base}/", headers={"Host": "a.example"}, timeout=10).status_code == 400


def test_an_origin_other_than_the_servers_is_refused_on_anything_but_a_get(store: Path) -> None:
    with serving(store, "--cors-origin", "http://dash.example:3000") as base:
        mine = base  # (http://127.0.0.1:PORT)
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            for origin in ("http://attacker.example", "null", "http://127.0.0.1:1"):
                r = httpx.request(
                    method, f"{base}/api/views", headers={"Origin": origin}, timeout=10
                )
                assert r.status_code == 403, (method, origin)
            # Its own origin or a --cors-origin: through to the app (which takes no writes).
            for origin in (mine, "http://dash.example:3000"):
                r = httpx.request(
                    method, f"{base}/api/views", headers={"Origin": origin}, timeout=10
                )
                assert r.status_code == 405, (method, origin)
        r = httpx.options(
            f"{base}/api/views",
            headers={"Origin": "http://attacker.example", "Access-Control-Request-Method": "GET"},
            timeout=10,
        )
        assert r.status_code == 403
        # A GET from any origin is answered (a browser keeps it from the page: no CORS header).
        r = httpx.get(
            f"{base}/api/views", headers={"Origin": "http://attacker.example"}, timeout=10
        )
        assert r.status_code == 200
        assert "access-control-allow-origin" not in r.headers


def test_the_cookie_is_set_only_from_a_query_token_that_matched_and_only_to_it(
    store: Path, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    with serving(store, env={"OBSFLOW_SERVE_TOKEN": TOKEN}, stderr=log) as base:
        url = f"{base}/api/views"
        hostile = ["x; Domain=evil.example", "garbage", "x\r\nSet-Cookie: a=b", TOKEN + "x"]
        for auth in (BEARER, {"Cookie": f"obsflow_token={TOKEN}"}):
            for given in hostile:
                r = httpx.get(url, params={"token": given}, headers=auth, timeout=10)
                assert "set-cookie" not in r.headers, given
                assert r.status_code in (200, 400), given
        # A CRLF (or any control character) in a token: a 400 saying so, not a 500.
        r = httpx.get(url, params={"token": "x\r\nSet-Cookie: a=b"}, timeout=10)
        assert r.status_code == 400
        assert "token" in r.text
        # A wrong query token alone: 401, no cookie.
        r = httpx.get(url, params={"token": "garbage"}, timeout=10)
        assert r.status_code == 401
        assert "set-cookie" not in r.headers
        # The right one: the cookie holds exactly the token, HttpOnly, SameSite=Strict, Path=/.
        r = httpx.get(url, params={"token": TOKEN}, timeout=10)
        assert r.status_code == 200
        assert r.headers.get_list("set-cookie") == [
            f"obsflow_token={TOKEN}; HttpOnly; SameSite=Strict; Path=/"
        ]
        # A next link never carries the token.
        r = httpx.get(f"{base}/api/captures/obs", params={"token": TOKEN, "limit": 10}, timeout=10)
        assert "cursor=" in r.links["next"]["url"]
        assert TOKEN not in r.links["next"]["url"]
    assert TOKEN not in log.read_text()


def test_a_response_without_limit_holds_at_most_the_default_and_links_the_rest(
    store: Path,
) -> None:
    explorer = open_store(str(store))
    want = explorer.capture_table("obs").to_pandas()
    with serving(store) as base:
        r = httpx.get(f"{base}/api/captures/obs", params={"limit": 5}, timeout=10)
        assert len(r.json()) == 5
        assert "next" in r.links
        # Pages of 701 rows: every reading exactly once, as the Explorer reads them.
        for fmt in ("json", "csv", "arrow"):
            pages = pages_of(f"{base}/api/captures/obs", {"limit": 701, "format": fmt})
            assert len(pages) == -(-len(want) // 701), fmt
            frames = [decoded(p, fmt, explorer.capture_table("obs")) for p in pages]
            got = by_keys(pd.concat(frames, ignore_index=True))
            pd.testing.assert_frame_equal(got, want, obj=fmt)
        for bad, says in (
            ({"from": "0001-01-01"}, "outside the times"),
            ({"until": "9999-12-31"}, "outside the times"),
            ({"limit": "2000000"}, "next link"),
            ({"cursor": "nope"}, "next link"),
            ({"cursor": "999.0.0"}, "start again"),
        ):
            for route in (
                "/api/captures/obs",
                "/api/views/v1s",
                "/api/views/v1s/late",
                "/api/deadletters",
            ):
                r = httpx.get(base + route, params=bad, timeout=10)
                assert r.status_code == 400, (route, bad, r.text)
                assert says in r.text, (route, bad, r.text)
