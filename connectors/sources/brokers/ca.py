"""``ca://PV[,PV...]``: EPICS Channel Access monitors through caproto's threading client.

The IOCs are found as every CA client finds them: ``EPICS_CA_ADDR_LIST``,
``EPICS_CA_AUTO_ADDR_LIST``, ``EPICS_CA_SERVER_PORT`` (see ``epics`` for what a reading is).
A reading's source is ``--source``, or the IOC's ``host:port``. caproto subscribes again by
itself after a reconnect; the value it sends then is a duplicate the capture drops.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from obsflow.connectors.sources.brokers import BrokerError, Subscription, client_library
from obsflow.connectors.sources.brokers.common import retry_seconds
from obsflow.connectors.sources.brokers.epics import EpicsSession, native, parse_pvs

if TYPE_CHECKING:
    from obsflow.connectors.sources.brokers import ClientFactory

EPICS_EPOCH = 631_152_000  # 1990-01-01 in POSIX seconds: where CA timestamps count from
START_GRACE = 2.0  # seconds to wait for the other PVs once one is connected


class CaClient(EpicsSession):
    """Channel Access monitors of the subscription's PVs (``sub.topics``)."""

    scheme = "ca"

    def __init__(self, sub: Subscription) -> None:
        super().__init__(parse_pvs(sub.topics, scheme="ca"), sub.source, sub.max_in_flight)
        self.sub = sub
        client_library("ca")  # (a missing caproto: the install hint)
        from caproto import AlarmStatus
        from caproto.threading.client import Context

        for status in AlarmStatus:  # CA's status numbers are the codes of their names
            self.updates.status_code(status.name)
        self._source = [self.updates.source_code(sub.source or "ca")] * len(self.pvs)
        self._array = [False] * len(self.pvs)
        self._new: set[int] = set()  # connected, not yet described (``poll``)
        self._subs: dict[int, Any] = {}
        self.ctx = Context()
        # (caproto keeps weak references to callbacks: bound methods of this client live on)
        self.channels_ = self.ctx.get_pvs(
            *(p.name for p in self.pvs), connection_state_callback=self._on_state
        )
        self._wait_for_connections()
        self.poll()

    def __repr__(self) -> str:
        return f"CaClient({len(self.pvs)} PVs, source={self.source!r})"

    def _wait_for_connections(self) -> None:
        """Until every PV is connected, ``START_GRACE`` after the first one, or the retry
        budget with none (then a ``BrokerError``); the others connect when they come."""
        deadline, first = time.monotonic() + retry_seconds(), None
        while time.monotonic() < deadline:
            up = sum(pv.connected for pv in self.channels_)
            if up == len(self.pvs):
                return
            if up and first is None:
                first = time.monotonic()
            if first is not None and time.monotonic() - first > START_GRACE:
                return
            time.sleep(0.05)
        self.close()
        raise BrokerError(
            f"no PV of ca:// answered within {retry_seconds():g} s (first: {self.pvs[0].name}): "
            "check EPICS_CA_ADDR_LIST / EPICS_CA_AUTO_ADDR_LIST and that the IOC runs"
        )

    def _on_state(self, pv: Any, state: str) -> None:
        i = self.index[pv.name]
        if state == "connected":
            if self.source is None:  # the IOC: the server the channel's circuit is on
                host, port = pv.circuit_manager.circuit.address
                self._source[i] = self.updates.source_code(f"{host}:{port}")
            self.connected(i)
            self._new.add(i)
        elif state == "disconnected":
            self.disconnected(i)

    def poll(self) -> None:
        """Describe and subscribe the PVs connected since the last call (in the session's
        thread: a read here cannot hold caproto's callback thread)."""
        from caproto import ChannelType

        while self._new:
            i = self._new.pop()
            pv = self.channels_[i]
            try:
                kind = ChannelType(pv.channel.native_data_type)
                count = int(pv.channel.native_data_count)
                if kind in (ChannelType.STRING,):
                    self.refuse(i, "a string PV: readings are numbers (obsflow keeps no text)")
                    continue
                control = pv.read(data_type="control", timeout=5)
            except Exception:  # noqa: S112 (disconnected again meanwhile: it comes back)
                continue
            self._array[i] = count > 1
            self.describe_channel(i, describe(kind.name, count, control.metadata))
            if i not in self._subs:
                sub = pv.subscribe(data_type="time")
                sub.add_callback(self._on_update)
                self._subs[i] = sub

    def _on_update(self, sub: Any, response: Any) -> None:
        i = self.index[sub.pv.name]
        self.resumed(i)
        md = response.metadata
        stamp = md.stamp
        t = (stamp.secondsSinceEpoch + EPICS_EPOCH) * 1_000_000_000 + stamp.nanoSeconds
        data = response.data
        if self._array[i]:
            try:
                array = native(data)
            except ValueError as exc:
                self.refuse(i, str(exc))
                return
            self.updates.add(i, self._source[i], t, math.nan, md.severity, md.status, array)
        else:
            self.updates.add(i, self._source[i], t, float(data[0]), md.severity, md.status)

    def close(self) -> None:
        self.updates.close()
        for sub in self._subs.values():
            sub.clear()
        self.ctx.disconnect()


def describe(kind: str, count: int, control: Any) -> dict[str, Any]:
    """A CA channel's metadata from its DBR_CTRL reply."""
    out: dict[str, Any] = {"protocol": "ca", "type": kind.lower(), "count": count}
    out["kind"] = "enum" if kind == "ENUM" else "waveform" if count > 1 else "scalar"
    units = getattr(control, "units", b"")
    out["units"] = units.decode("latin-1") if isinstance(units, bytes) else str(units)
    for ours, theirs in (("display_low", "lower_disp_limit"), ("display_high", "upper_disp_limit")):
        if hasattr(control, theirs):
            out[ours] = float(getattr(control, theirs))
    if kind == "ENUM":
        out["enum"] = [s.decode("latin-1") for s in control.enum_strings]
    return out


if TYPE_CHECKING:  # the registry loads it by name: mypy checks that it fits the Protocol
    _client: ClientFactory = CaClient
