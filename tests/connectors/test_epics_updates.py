"""The EPICS clients' shared parts without a server: PV lists and the update buffer."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from obsflow.connectors.errors import ConfigError
from obsflow.connectors.sources.brokers import BrokerURL, connect
from obsflow.connectors.sources.brokers.epics import PV, Updates, parse_pvs, read_pv_file


def test_pv_names_are_channels_or_get_one_and_globs_are_refused(tmp_path: Path) -> None:
    url = BrokerURL.parse("ca://BL1:temp,BL1:wf")
    assert url.names == ("BL1:temp", "BL1:wf")
    assert str(url) == "ca://BL1:temp,BL1:wf"
    listed = tmp_path / "pvs.txt"
    listed.write_text("# beamline\nXF:31ID{Tbl:1}X  tbl1.x\n\nBL1:temp  # again\n")
    pvs = parse_pvs([*url.names, *read_pv_file(str(listed))], scheme="ca")
    assert pvs == (
        PV("BL1:temp", "BL1:temp"),
        PV("BL1:wf", "BL1:wf"),
        PV("XF:31ID{Tbl:1}X", "tbl1.x"),
    )
    with pytest.raises(ConfigError, match=r"no channel id .* give it one in --pvs FILE"):
        parse_pvs(["XF:31ID{Tbl:1}X"], scheme="ca")
    with pytest.raises(ConfigError, match="is a glob: neither Channel Access nor PV Access"):
        parse_pvs(["BL1:*"], scheme="pva")
    with pytest.raises(ConfigError, match="two PVs would be channel 'x'"):
        parse_pvs(["A:1 x", "A:2 x"], scheme="ca")
    with pytest.raises(ConfigError, match="needs PV names"):
        connect("pva://", [], "")


def test_updates_become_one_columnar_table_and_the_buffer_is_bounded() -> None:
    updates = Updates([PV("A:1", "a1"), PV("A:wf", "awf")], capacity=4)
    src = updates.source_code("ioc1")
    ok = updates.status_code("NO_ALARM")
    wave = np.arange(6, dtype=np.float64).reshape(2, 3)
    updates.add(0, src, 10, 1.5, 0, ok)
    updates.add(1, src, 11, np.nan, 2, updates.status_code("HIHI"), wave)
    updates.add(0, src, 12, 2.5, 1, ok)
    table = updates.take(2, 0.0)
    assert table is not None
    assert table.column("channel").to_pylist() == ["a1", "awf"]
    assert table.column("time").cast(pa.int64()).to_pylist() == [10, 11]
    assert table.column("alarm_severity").to_pylist() == ["NO_ALARM", "MAJOR"]
    assert table.column("alarm_status").to_pylist() == ["NO_ALARM", "HIHI"]
    assert table.column("payload").to_pylist() == [None, wave.tobytes()]
    assert table.column("payload_shape").to_pylist() == [None, [2, 3]]
    rest = updates.take(10, 0.0)
    assert rest is not None
    assert rest.column("value").to_pylist() == [2.5]
    assert "payload" not in rest.column_names

    for t in range(4):  # full: the next add waits until a take makes room
        updates.add(0, src, 20 + t, 0.0, 0, ok)
    waiting = threading.Thread(target=updates.add, args=(0, src, 99, 0.0, 0, ok))
    waiting.start()
    waiting.join(0.3)
    assert waiting.is_alive()
    assert updates.n == 4
    assert updates.take(1, 0.0) is not None
    waiting.join(5)
    assert not waiting.is_alive()
    assert updates.n == 4
