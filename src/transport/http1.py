"""HTTP/1.1 parsing shared by the front door's lean path and the connections Hypercorn
serves: h11 with the request-head limit enforced on every head.

h11's ``max_incomplete_event_size`` is checked only while an event is incomplete (when
``next_event`` has to answer ``NEED_DATA``): a head larger than the limit that arrives
whole in one read is parsed and accepted. ``HeadLimitedConnection`` also measures every
complete request head, so that the limit holds however the bytes arrive.
"""

from __future__ import annotations

import h11

HEAD_LIMIT = 16 * 1024  # bytes of request head we accept (request line, headers, blank line)
# Closing with bytes of the client's still unread makes the kernel send a reset, which can
# destroy the answer just sent before the client reads it. So a server that closes first
# half-closes, then reads and drops what the client still sends, this long and this much
# at most (nginx's lingering_close does the same).
LINGER_S = 2.0
LINGER_BYTES = 1024 * 1024


class HeadLimitedConnection(h11.Connection):
    """An ``h11.Connection`` that raises ``RemoteProtocolError`` (status hint 431) for a
    request head larger than ``max_incomplete_event_size``, complete or not."""

    def __init__(self, max_incomplete_event_size: int = HEAD_LIMIT) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size=max_incomplete_event_size)
        self.head_limit = max_incomplete_event_size

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        # Only a client in IDLE can send a head; what the Request event consumed of the
        # unparsed buffer is its size. (The buffer's length, not ``trailing_data``, which
        # copies it: many small pipelined requests would make that quadratic.)
        idle = self.their_state is h11.IDLE
        before = len(self._receive_buffer) if idle else 0
        event = super().next_event()
        if idle and isinstance(event, h11.Request) and before - len(self._receive_buffer) > self.head_limit:
            # As h11 does for its own errors: the peer is in ERROR from now on, and an
            # error answer may still be sent (our side is in SEND_RESPONSE).
            self._process_error(self.their_role)
            raise h11.RemoteProtocolError(
                f"the request head is larger than {self.head_limit} bytes", error_status_hint=431
            )
        return event
