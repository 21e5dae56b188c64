"""Test-side peers of the controllers: a paho subscriber that collects what the line publishes."""

from __future__ import annotations

import json
import queue
import threading

import paho.mqtt.client as mqtt

from connectors.mqtt import MosquittoBroker


class Subscriber:
    """A paho client subscribed with QoS 1, collecting ``(topic, qos, payload)``."""

    def __init__(self, broker: MosquittoBroker, topic: str):
        self.messages: queue.Queue[tuple[str, int, dict]] = queue.Queue()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.qos, json.loads(m.payload)))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert subscribed.wait(5), "subscription not acknowledged"

    def take(self, n: int, timeout_s: float = 5.0) -> list[tuple[str, int, dict]]:
        return [self.messages.get(timeout=timeout_s) for _ in range(n)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
