"""When has everything a dead worker sent reached the main process?

```
 worker k (generation g) ─PUSH─▶ ipc://@<run>-results-k.g ─┐
 worker j                ─PUSH─▶ ipc://@<run>-results-j.0 ─┤ one PULL socket (bound to all)
                                                           └▶ zmq monitor: ACCEPTED (fd, endpoint)
                                                                           DISCONNECTED (fd)
```

A worker's messages travel through zmq's I/O thread, so when its process dies some of what
it sent may still be on the way. Restarting it (``worker_restarts``) needs a sharp line: a
message either reached the main process before the death is reported, or it never existed,
so each of the dead worker's batches is either received or dispatched again, never both.

- Each worker generation connects to its own endpoint of the results socket, so the
  monitor's ACCEPTED event says which connection belongs to whom.
- zmq hands every complete message of a connection to the socket before it reports the
  connection's DISCONNECTED (it reads to end-of-file first), and a worker cannot send
  before the main side has accepted its connection (ZMTP's greeting comes first). So once
  every accepted connection of the dead worker's endpoint has disconnected, or none was
  ever accepted, nothing more of it can arrive.
- :class:`ConnectionLedger` reads the monitor's events only when asked (at a death), so it
  costs nothing per batch.
"""

from __future__ import annotations

import time
from collections import Counter

import zmq
from zmq.utils.monitor import recv_monitor_message

__all__ = ["ConnectionLedger"]

_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
_WAIT_STEP_MS = 5  # one wait for the next monitor event; the deadline is re-checked after it


class ConnectionLedger:
    """Open connections per endpoint of one bound socket, from its monitor events."""

    def __init__(self, socket: zmq.Socket) -> None:
        self._socket = socket
        self._monitor = socket.get_monitor_socket(_EVENTS)
        self._monitor.setsockopt(zmq.LINGER, 0)
        self._endpoint_of: dict[int, str] = {}  # fd -> endpoint of each open connection
        self._open: Counter = Counter()  # endpoint -> connections open

    def _pump(self, wait_ms: int) -> None:
        """Take in every event available, waiting up to ``wait_ms`` for the first."""
        monitor = self._monitor
        if not monitor.poll(wait_ms):
            return
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            fd = event["value"]
            if event["event"] == zmq.EVENT_ACCEPTED:
                endpoint = event["endpoint"].decode()
                self._endpoint_of[fd] = endpoint
                self._open[endpoint] += 1
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                endpoint = self._endpoint_of.pop(fd, None)
                if endpoint is not None:
                    self._open[endpoint] -= 1

    def wait_closed(self, endpoint: str, timeout_s: float) -> bool:
        """True once no connection to ``endpoint`` is open (its peer died, so none will
        open that could carry a message); False if that is not seen within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        self._pump(0)
        while self._open[endpoint] > 0:
            if time.monotonic() >= deadline:
                return False
            self._pump(_WAIT_STEP_MS)
        return True

    def forget(self, endpoint: str) -> None:
        """The endpoint is unbound: drop what is known of it."""
        self._pump(0)
        self._open.pop(endpoint, None)
        for fd in [fd for fd, ep in self._endpoint_of.items() if ep == endpoint]:
            del self._endpoint_of[fd]

    def close(self) -> None:
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
