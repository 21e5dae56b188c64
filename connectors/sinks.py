"""The one interface every downstream controller implements, and how a controller's address is written."""

from __future__ import annotations

from abc import ABC, abstractmethod

from connectors.records import Decision


def split_address(address: str, default_port: int) -> tuple[str, int]:
    """``host:port`` (or ``host``) → ``(host, port)``."""
    host, _, port = address.rpartition(":") if ":" in address else (address, "", str(default_port))
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise ValueError(f"{address!r} is not host:port") from None


class ControllerUnavailable(ConnectionError):
    """A controller (PLC, broker) cannot be reached; the message names host:port."""


class DecisionSink(ABC):
    """A downstream controller that acts on decisions (a PLC reject gate, an MQTT topic, ...).

    ``open`` connects and raises :class:`ControllerUnavailable` naming ``host:port`` when the peer is not
    there; ``send`` acts on one decision and returns a short acknowledgement for the audit trail (``"ok"``, or
    ``"error: ..."`` with what the peer answered), reconnecting when the connection was lost, and raises
    :class:`ControllerUnavailable` when the peer cannot be reached (the caller sends the same decision again:
    sinks act once per ``decision_id``); ``fail_safe`` puts the controller in its safe state or takes it out;
    ``close`` releases the connection.
    """

    name: str = "sink"
    address: str = ""

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def send(self, decision: Decision) -> str: ...

    def fail_safe(self, engaged: bool) -> None:
        """Enter (``True``) or leave the controller's safe state; a controller without one does nothing."""

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> DecisionSink:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
