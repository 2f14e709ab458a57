"""``pva://PV[,PV...]``: EPICS PV Access monitors through p4p (PVXS).

The servers are found as every PVA client finds them: ``EPICS_PVA_ADDR_LIST``,
``EPICS_PVA_AUTO_ADDR_LIST``, ``EPICS_PVA_SERVER_PORT``, ``EPICS_PVA_BROADCAST_PORT`` (see
``epics`` for what a reading is). NTScalar, NTEnum, NTScalarArray and NTNDArray values are
read; a string value is refused. p4p does not say which server a channel reached, so a
reading's source is ``--source``, or ``pva``. Each monitor asks the server for a queue of
``QUEUE`` updates: a server squashes updates a client has not taken beyond it.
"""

from __future__ import annotations

import contextlib
import math
import threading
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from obsflow.connectors.sources.brokers import BrokerError, Subscription, client_library
from obsflow.connectors.sources.brokers.common import retry_seconds
from obsflow.connectors.sources.brokers.epics import EpicsSession, native, parse_pvs

if TYPE_CHECKING:
    from obsflow.connectors.sources.brokers import ClientFactory

QUEUE = 1000
PVA_STATUS = ("NO_ALARM", "DEVICE", "DRIVER", "RECORD", "DB", "CONF", "UNDEFINED", "CLIENT")


class PvaClient(EpicsSession):
    """PV Access monitors of the subscription's PVs (``sub.topics``)."""

    scheme = "pva"

    def __init__(self, sub: Subscription) -> None:
        super().__init__(parse_pvs(sub.topics, scheme="pva"), sub.source, sub.max_in_flight)
        self.sub = sub
        client_library("pva")
        from p4p.client.thread import Context

        self._src = self.updates.source_code(sub.source or "pva")
        self._kind: list[str | None] = [None] * len(self.pvs)  # known after a first value
        self._up = [False] * len(self.pvs)
        self._any = threading.Event()
        self._closing: set[int] = set()
        self.ctx = Context("pva", nt=False)  # raw Values: timestamps to the nanosecond
        request = f"record[queueSize={QUEUE}]"
        self._subs = {
            i: self.ctx.monitor(p.name, partial(self._on_value, i), request, notify_disconnect=True)
            for i, p in enumerate(self.pvs)
        }
        if not self._any.wait(retry_seconds()):
            self.close()
            raise BrokerError(
                f"no PV of pva:// answered within {retry_seconds():g} s (first: "
                f"{self.pvs[0].name}): check EPICS_PVA_ADDR_LIST and that the server runs"
            )

    def __repr__(self) -> str:
        return f"PvaClient({len(self.pvs)} PVs, source={self.source!r})"

    def _on_value(self, i: int, value: Any) -> None:
        if isinstance(value, Exception):  # Disconnected (also the first call), RemoteError
            if self._up[i]:
                self._up[i] = False
                self.disconnected(i)
            return
        if not self._up[i]:  # a first value after connecting: what is it?
            self._up[i] = True
            self.connected(i)
            self._kind[i] = self._classify(i, value)
            self._any.set()
        self.resumed(i)
        kind = self._kind[i]
        if kind is None:
            return
        t = value["timeStamp.secondsPastEpoch"] * 1_000_000_000 + value["timeStamp.nanoseconds"]
        severity = value["alarm.severity"]
        message = value["alarm.message"]
        status = self.updates.status_code(message or PVA_STATUS[value["alarm.status"] % 8])
        if kind == "enum":
            self.updates.add(i, self._src, t, float(value["value.index"]), severity, status)
        elif kind == "scalar":
            self.updates.add(i, self._src, t, float(value["value"]), severity, status)
        else:
            try:
                array = native(value["value"])
            except (ValueError, TypeError) as exc:
                self.refuse(i, str(exc))
                return
            if kind == "ndarray":
                dims = [d["size"] for d in value["dimension"]][::-1]  # (NDArray: x first)
                if dims and int(np.prod(dims)) == array.size:
                    array = array.reshape(dims)
            self.updates.add(i, self._src, t, math.nan, severity, status, array)

    def _classify(self, i: int, value: Any) -> str | None:
        """The PV's kind from a value (None: refused), and its metadata recorded."""
        nt = value.getID()
        v = value["value"]
        meta: dict[str, Any] = {"protocol": "pva", "type": nt}
        if "NTEnum" in nt:
            kind = "enum"
            meta["enum"] = list(value["value.choices"])
        elif "NTNDArray" in nt:
            kind = "ndarray"
        elif isinstance(v, np.ndarray) and v.dtype.kind in "biuf":
            kind = "waveform"
        elif isinstance(v, (bool, int, float)):
            kind = "scalar"
        else:
            what = "a string PV" if isinstance(v, str) else f"a {type(v).__name__} value"
            self.refuse(i, f"{what} ({nt}): readings are numbers (obsflow keeps no text)")
            self._closing.add(i)
            return None
        meta["kind"] = kind
        with contextlib.suppress(KeyError):  # (a Value without display fields)
            meta["units"] = value["display.units"]
            meta["display_low"] = float(value["display.limitLow"])
            meta["display_high"] = float(value["display.limitHigh"])
        self.describe_channel(i, meta)
        return kind

    def poll(self) -> None:
        """Close the monitors of refused PVs (not from p4p's own callback thread)."""
        while self._closing:
            sub = self._subs.pop(self._closing.pop(), None)
            if sub is not None:
                sub.close()

    def close(self) -> None:
        self.updates.close()
        for sub in self._subs.values():
            sub.close()
        self.ctx.close()


if TYPE_CHECKING:  # the registry loads it by name: mypy checks that it fits the Protocol
    _client: ClientFactory = PvaClient
