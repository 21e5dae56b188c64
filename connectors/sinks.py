"""The one interface every downstream controller implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

from connectors.records import Decision


class ControllerUnavailable(ConnectionError):
    """A controller (PLC, broker) cannot be reached; the message names host:port."""


class DecisionSink(ABC):
    """A downstream controller that acts on decisions (a PLC reject gate, an MQTT topic, ...).

    ``open`` connects and raises :class:`ControllerUnavailable` naming ``host:port`` when the peer is not
    there; ``send`` acts on one decision and returns a short acknowledgement string for the audit trail
    (``"ok"``, or what the peer answered); ``close`` releases the connection.
    """

    name: str = "sink"

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def send(self, decision: Decision) -> str: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> DecisionSink:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
