"""Test-side peers of the controllers: a paho subscriber that collects what the line publishes, a sink whose code
breaks on one decision, and a controller whose outage ends between two of the courier's attempts."""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt

from connectors.mqtt import MosquittoBroker
from connectors.records import Decision
from connectors.sinks import ControllerUnavailable, DecisionSink


class Subscriber:
    """A paho client subscribed with QoS 1, collecting ``(topic, qos, payload)``, each ``decision_id`` once.

    ``durable=True`` keeps a broker session (``clean_session=False``): a persistent broker queues what is
    published while this subscriber is away. Repeats of a decision id are counted in :attr:`duplicates`.
    """

    def __init__(self, broker: MosquittoBroker, topic: str, durable: bool = False):
        self.messages: queue.Queue[tuple[str, int, dict]] = queue.Queue()
        self.duplicates = 0
        self._seen: set[str] = set()
        subscribed = threading.Event()
        client_id = f"fusionline-test-{id(self)}" if durable else ""
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not durable)
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.5)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(5), "subscription not acknowledged"

    def _on_message(self, _c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        payload = json.loads(m.payload)
        ident = payload.get("decision_id")
        if ident and ident in self._seen:
            self.duplicates += 1
            return
        self._seen.add(ident)
        self.messages.put((m.topic, m.qos, payload))

    def take(self, n: int, timeout_s: float = 5.0) -> list[tuple[str, int, dict]]:
        return [self.messages.get(timeout=timeout_s) for _ in range(n)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class BrokenSink(DecisionSink):
    """A controller whose code fails (not an outage) on one decision: a bug, which must not pass silently."""

    name, address = "broken", "127.0.0.1:0"

    def __init__(self, fail_seq: int):
        self.fail_seq = fail_seq
        self.sent: list[int] = []

    def open(self) -> None:
        pass

    def send(self, decision: Decision) -> str:
        if decision.seq == self.fail_seq:
            raise ValueError(f"cannot encode seq {decision.seq}")
        self.sent.append(decision.seq)
        return "ok"

    def close(self) -> None:
        pass


class ComesBackUnseen(DecisionSink):
    """Wraps a controller that is down and brings it back (``come_back``) just before the first call made
    ``after_s`` or more after its first failed call began: whatever the courier's backoff, no failed call shows
    the courier that the outage lasted ``after_s``. ``came_back`` says it happened.
    """

    def __init__(self, sink: DecisionSink, come_back: Callable[[], object], after_s: float):
        self.sink, self.come_back, self.after_s = sink, come_back, after_s
        self.name, self.address = sink.name, sink.address
        self.came_back = False
        self._first_failure: float | None = None

    def open(self) -> None:
        self.sink.open()

    def send(self, decision: Decision) -> str:
        return self._call(lambda: self.sink.send(decision))

    def fail_safe(self, engaged: bool) -> None:
        self._call(lambda: self.sink.fail_safe(engaged))

    def close(self) -> None:
        self.sink.close()

    def _call(self, action: Callable[[], str | None]) -> str:
        began = time.monotonic()
        if self._first_failure is not None and not self.came_back and began - self._first_failure >= self.after_s:
            self.come_back()
            self.came_back = True
        try:
            return action() or ""
        except ControllerUnavailable:
            if self._first_failure is None:
                self._first_failure = began
            raise
