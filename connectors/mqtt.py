"""Decisions to an MQTT topic (QoS 1), and a local Mosquitto broker for tests and the demo.

Example:
    >>> with MosquittoBroker() as broker, MqttPublisher(broker.host, broker.port, line="factory") as pub:
    ...     pub.send(decision)          # -> topic fusionline/factory/decisions, waits for the PUBACK
    'ok'
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import shutil
import signal
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
        "decision_id": d.decision_id,
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
    other arrive in that order. When the broker is away or sends no PUBACK, ``send`` drops the connection
    (and paho's queue with it) and raises :class:`ControllerUnavailable`; the next ``send`` reconnects.
    Subscribers de-duplicate on ``decision_id``: QoS 1 is at-least-once, so a message whose PUBACK was lost
    can arrive twice. Every publish goes through one guard that refuses a topic outside ``topic_prefix``.

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
        self.topic_prefix = topic_prefix
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
        """Publish with QoS 1 and wait for the PUBACK: ``"ok"``.

        Raises :class:`ControllerUnavailable` naming the item and host:port when the broker is away.
        """
        if self._client is None or not self._client.is_connected():
            self.open()
        assert self._client is not None
        info = self.publish(self.topic, json.dumps(decision_payload(decision), default=str))
        try:
            info.wait_for_publish(self.timeout_s)
            reason = "" if info.is_published() else f"no PUBACK within {self.timeout_s:g} s"
        except (ValueError, RuntimeError) as exc:
            reason = str(exc) or type(exc).__name__
        if reason:
            self.close()
            raise ControllerUnavailable(f"MQTT broker at {self.address} did not take {decision.item_id}: {reason}")
        return "ok"

    def publish(self, topic: str, payload: str) -> mqtt.MQTTMessageInfo:
        """The only path to the broker: QoS 1, and only under ``<topic_prefix>/`` (no wildcards)."""
        if not topic.startswith(self.topic_prefix + "/") or any(c in topic for c in "+#\0"):
            raise PermissionError(f"topic {topic!r} is outside {self.topic_prefix}/ on broker {self.address}")
        if self._client is None:
            raise ControllerUnavailable(f"MQTT broker at {self.address}: publisher is not connected")
        return self._client.publish(topic, payload, qos=1)

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

    Listens on ``127.0.0.1:<port>`` (``port=0``: a free one), anonymous. ``start`` returns once the port
    accepts connections. With ``persistent=True`` the broker keeps durable sessions (a subscriber connected
    with ``clean_session=False``) and their queued QoS 1 messages in its folder, across ``stop(keep_state=True)``
    and ``start`` on the same port: an outage that the subscribers survive, as with a production broker.

    Example:
        >>> with MosquittoBroker() as broker:
        ...     print(broker.host, broker.port)
        127.0.0.1 38211
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", executable: str | None = None,
                 persistent: bool = False):
        self.host = host
        self.port = port
        self.executable = executable
        self.persistent = persistent
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
        self._dir = self._dir or tempfile.TemporaryDirectory(prefix="fusionline-mosquitto-")
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
        persistence = "false"
        if self.persistent:  # as root, Mosquitto drops to user `mosquitto`, who could not write our folder
            persistence = f"true\npersistence_location {self._dir.name}/\nuser {getpass.getuser()}"
        conf.write_text(
            f"listener {port} {self.host}\nallow_anonymous true\npersistence {persistence}\n"
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

    def stop(self, keep_state: bool = False) -> None:
        """Terminate the broker; remove its folder (config, persisted sessions) unless ``keep_state``."""
        if self._proc is not None:
            self._kill()
            log.info("broker stopped broker=%s", self.address)
        if self._dir is not None and not keep_state:
            self._dir.cleanup()
            self._dir = None

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): a hung broker, its connections open and nothing answered."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused broker (SIGCONT)."""
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None:
            raise RuntimeError(f"Mosquitto on {self.address} is not running")
        self._proc.send_signal(sig)

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
