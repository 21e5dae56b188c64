"""Decisions to an MQTT topic (QoS 1), and a local Mosquitto broker for tests and the demo.

Example:
    >>> with MosquittoBroker() as broker, MqttPublisher(broker.host, broker.port, line="factory") as pub:
    ...     pub.send(decision)          # -> topic fusionline/factory/decisions, waits for the PUBACK
    'ok'
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from connectors.records import Decision
from connectors.sinks import ControllerUnavailable, DecisionSink

log = logging.getLogger("fusionline.mqtt")


def decision_payload(d: Decision) -> dict[str, Any]:
    """The JSON object published for one decision."""
    return {
        "item_id": d.item_id,
        "seq": d.seq,
        "label": d.label,
        "confidence": d.confidence,
        "reject": d.reject,
        "modality_weights": d.modality_weights,
        "model_version": d.model_version,
        "latency_ms": d.latency_ms,
        "extra": d.extra,
        "ts": d.ts,
    }


class MqttPublisher(DecisionSink):
    """Publishes each decision as JSON on ``<topic_prefix>/<line>/decisions`` with QoS 1.

    ``send`` returns once the broker acknowledged the message (PUBACK), so decisions sent one after the
    other arrive in that order. Subscribers should de-duplicate on ``item_id``: QoS 1 is at-least-once,
    and a message queued while the broker was away is delivered after the automatic reconnect.
    ``send`` may be called from several threads (paho's client is thread-safe); order is then the order
    of the calls.

    Args:
        host, port: the broker.
        line: the production line, the topic's middle level.
        topic_prefix: the topic's first level.
        timeout_s: connect timeout, and how long ``send`` waits for the PUBACK.
        client_id: MQTT client id ("" lets paho pick a random one).

    Example:
        >>> pub = MqttPublisher("127.0.0.1", 1883, line="factory")
        >>> pub.open(); pub.send(decision); pub.close()
        'ok'
    """

    name = "mqtt"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        line: str = "factory",
        topic_prefix: str = "fusionline",
        timeout_s: float = 2.0,
        client_id: str = "",
    ):
        if not line or any(c in line for c in "/+#"):
            raise ValueError(f"line {line!r} must be a non-empty MQTT topic level (no '/', '+', '#')")
        self.host, self.port = host, port
        self.topic = f"{topic_prefix}/{line}/decisions"
        self.timeout_s = timeout_s
        self.client_id = client_id
        self._client: mqtt.Client | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def open(self) -> None:
        """Connect and wait for the broker's CONNACK; raises :class:`ControllerUnavailable` naming host:port."""
        self.close()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311)
        client.connect_timeout = self.timeout_s
        connack: dict[str, Any] = {}
        connected = threading.Event()

        def on_connect(_c: mqtt.Client, _u: object, _flags: object, reason_code: Any, _props: object) -> None:
            connack["reason"] = reason_code
            connected.set()

        client.on_connect = on_connect
        try:
            client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise ControllerUnavailable(f"MQTT broker at {self.address} is unreachable: {exc}") from None
        client.loop_start()
        if not connected.wait(self.timeout_s) or connack["reason"].is_failure:
            client.loop_stop()
            client.disconnect()
            why = (
                f"refused the connection ({connack['reason']})"
                if connack
                else f"sent no CONNACK within {self.timeout_s:g} s"
            )
            raise ControllerUnavailable(f"MQTT broker at {self.address} {why}")
        self._client = client
        log.info("publisher connected broker=%s topic=%s", self.address, self.topic)

    def send(self, decision: Decision) -> str:
        """Publish with QoS 1 and wait for the PUBACK; ``"ok"``, or ``"error: ..."`` with the reason."""
        if self._client is None:
            raise RuntimeError(f"publisher to {self.address} is not open; call open() first")
        payload = json.dumps(decision_payload(decision), default=str)
        info = self._client.publish(self.topic, payload, qos=1)
        try:
            info.wait_for_publish(self.timeout_s)
        except (ValueError, RuntimeError) as exc:
            return self._failed(decision, str(exc))
        if not info.is_published():
            return self._failed(decision, f"no PUBACK from {self.address} within {self.timeout_s:g} s")
        return "ok"

    def _failed(self, decision: Decision, reason: str) -> str:
        log.warning("publish failed broker=%s item=%s reason=%s", self.address, decision.item_id, reason)
        return f"error: {reason}"

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class MosquittoBroker:
    """A real Mosquitto broker on loopback, as a subprocess (for tests and ``make demo``).

    Listens on ``127.0.0.1:<port>`` (``port=0``: a free one), anonymous, no persistence. ``start`` returns
    once the port accepts connections.

    Example:
        >>> with MosquittoBroker() as broker:
        ...     print(broker.host, broker.port)
        127.0.0.1 38211
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", executable: str | None = None):
        self.host = host
        self.port = port
        self.executable = executable
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _find_executable(self) -> str:
        found = self.executable or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.access(found, os.X_OK):
            raise FileNotFoundError(
                f"Mosquitto broker not found ({found}); install it: apt-get install mosquitto"
            )
        return found

    def start(self, timeout_s: float = 5.0, attempts: int = 3) -> MosquittoBroker:
        """Start the broker; retries on another free port when the picked one was taken meanwhile."""
        if self._proc is not None:
            raise RuntimeError(f"Mosquitto on {self.address} is already running")
        exe = self._find_executable()
        self._dir = tempfile.TemporaryDirectory(prefix="fusionline-mosquitto-")
        fixed = self.port != 0
        attempt = 1
        while True:
            port = self.port if fixed else free_port(self.host)
            try:
                self._launch(exe, port, timeout_s)
                break
            except OSError as exc:
                if fixed or attempt == attempts:
                    self.stop()
                    raise
                log.warning("broker start failed port=%d attempt=%d reason=%s", port, attempt, exc)
                attempt += 1
        self.port = port
        log.info("broker listening broker=%s", self.address)
        return self

    def _launch(self, exe: str, port: int, timeout_s: float) -> None:
        assert self._dir is not None
        conf = Path(self._dir.name) / "mosquitto.conf"
        conf.write_text(
            f"listener {port} {self.host}\nallow_anonymous true\npersistence false\n"
            "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
        )
        log_path = Path(self._dir.name) / "mosquitto.log"
        with log_path.open("wb") as log_file:
            self._proc = subprocess.Popen([exe, "-c", str(conf)], stdout=log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (rc := self._proc.poll()) is not None:
                self._proc = None
                tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
                raise OSError(f"Mosquitto on {self.host}:{port} exited with code {rc}: {tail}")
            try:
                socket.create_connection((self.host, port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        self._kill()
        raise TimeoutError(f"Mosquitto on {self.host}:{port} did not accept connections within {timeout_s} s")

    def stop(self) -> None:
        """Terminate the broker and remove its config."""
        if self._proc is not None:
            self._kill()
            log.info("broker stopped broker=%s", self.address)
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def _kill(self) -> None:
        assert self._proc is not None
        self._proc.terminate()
        try:
            self._proc.wait(timeout=3.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
