"""Delivery to the controllers: one background courier per controller, fed from the durable outbox.

::

    decision ─> Dispatcher.put ─> Outbox (SQLite, per controller) ─> Courier thread ─> sink.send ─> ack
                                                                       (reconnect + backoff;
                                                                        FAIL-SAFE past the deadline)

Inference never waits for a controller: a decision is queued durably and each courier sends its controller's
pending decisions in order, one at a time, retrying the head until the controller answers. A controller that
leaves a decision unanswered longer than ``fail_safe_after_s`` raises the alarm ``FAIL-SAFE: plc 127.0.0.1:5020
unreachable for 10 s``; once it is reachable again the courier first puts it in its safe state (the PLC gate
held closed), delivers the backlog in order, then releases it.

An outage is what the line lives through: it begins when the first unanswered attempt began (a send that waits
out its timeout counts from when it was sent; a controller that goes away while nothing is pending for it is
not in an outage until a decision waits for it) and ends when the attempt that gets through begins. The courier
tries again at the deadline whatever its backoff, so the alarm is raised at ``fail_safe_after_s``, and raised
exactly when the outage it reports (``longest_outage_s``) reached ``fail_safe_after_s``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from connectors.outbox import Outbox
from connectors.records import Decision
from connectors.sinks import ControllerUnavailable, DecisionSink

log = logging.getLogger("fusionline.delivery")


@dataclass
class DeliveryStats:
    """What one controller's delivery did during a run."""

    controller: str
    address: str
    delivered: int = 0  # answered "ok"
    refused: int = 0  # answered with an error: final, not retried
    resent: int = 0  # answered decisions left pending by an earlier run
    already_delivered: int = 0  # put again (a replay) after an earlier run delivered them: not sent
    outages: int = 0
    longest_outage_s: float = 0.0  # from the first unanswered attempt's start to the start of the one that got through
    max_backlog: int = 0  # most decisions pending at once
    pending: int = 0  # left in the outbox at the end (sent on the next start)
    fail_safe: list[str] = field(default_factory=list)  # the FAIL-SAFE alarms raised


class Courier:
    """Sends one controller's pending decisions in outbox order from a background thread.

    Args:
        sink: the controller (already opened or not: ``send`` reconnects).
        outbox: where the pending decisions are.
        on_ack: called ``(controller, decision, ack)`` from the courier thread after each answer is stored.
        fail_safe_after_s: how long the controller may stay unreachable before the FAIL-SAFE alarm.
        backoff_s: first and longest wait between reconnect attempts (doubling in between).
    """

    def __init__(
        self,
        sink: DecisionSink,
        outbox: Outbox,
        on_ack: Callable[[str, Decision, str], None],
        fail_safe_after_s: float = 10.0,
        backoff_s: tuple[float, float] = (0.1, 1.0),
    ):
        self.sink = sink
        self.outbox = outbox
        self.on_ack = on_ack
        self.fail_safe_after_s = fail_safe_after_s
        self.backoff_s = backoff_s
        self.stats = DeliveryStats(sink.name, sink.address)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._down_since: float | None = None
        self._alarm = False  # past the deadline: engage the safe state on reconnect
        self._engaged = False  # the safe state is on
        #: what ended the thread when it was not an outage (a bug in a sink); ``Dispatcher.close`` raises it
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name=f"fusionline-courier-{sink.name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def notify(self) -> None:
        """New decisions are in the outbox."""
        self._idle.clear()
        self._wake.set()

    def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is pending (True) or ``timeout_s`` passed (False)."""
        self.notify()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._thread.is_alive():
            if self._idle.wait(min(0.1, max(0.0, deadline - time.monotonic()))) and not self._wake.is_set():
                return True
        return False

    def stop(self) -> DeliveryStats:
        """Stop the thread (a decision being retried stays pending) and close the controller."""
        self._stop.set()
        self._wake.set()
        self._thread.join()
        self.sink.close()
        self.stats.pending = self.outbox.count_pending(self.sink.name)
        if self._down_since is not None:
            now = time.monotonic()
            self._check_deadline(now)
            self._outage_over(now)
        return self.stats

    def _run(self) -> None:
        try:
            self._deliver()
        except Exception as exc:  # not an outage: stop delivering, keep the rest pending, say so at close
            self.error = exc
            self._idle.set()
            log.exception("courier stopped by an unexpected error controller=%s address=%s pending=%d",
                          self.sink.name, self.sink.address, self.outbox.count_pending(self.sink.name))

    def _deliver(self) -> None:
        name = self.sink.name
        while not self._stop.is_set():
            self._wake.clear()
            batch = self.outbox.pending(name)
            if not batch:
                if self._engaged and not self._retry(self._release):
                    return
                self._idle.set()
                self._wake.wait(0.5)
                continue
            self.stats.max_backlog = max(self.stats.max_backlog, self.outbox.count_pending(name))
            for decision in batch:
                ack = self._retry(lambda d=decision: self.sink.send(d))
                if ack is None:  # stopped while the controller was away: it stays pending
                    return
                self.outbox.ack(name, decision.decision_id, ack)
                if ack == "ok":
                    self.stats.delivered += 1
                else:
                    self.stats.refused += 1
                self.on_ack(name, decision, ack)

    def _retry(self, action: Callable[[], str | None]) -> str | None:
        """Run ``action`` until the controller answers; ``None`` when stopped first."""
        delay = self.backoff_s[0]
        while not self._stop.is_set():
            started = time.monotonic()
            self._check_deadline(started)
            try:
                if self._alarm and not self._engaged:
                    self.sink.fail_safe(True)
                    self._engaged = True
                answer = action()
            except ControllerUnavailable as exc:
                self._outage(exc, started)
                self._stop.wait(self._next_attempt_in(delay))
                delay = min(2 * delay, self.backoff_s[1])
                continue
            if self._down_since is not None:
                self._outage_over(started)
            return answer or ""
        return None

    def _next_attempt_in(self, delay: float) -> float:
        """The backoff ``delay``, cut short to try again at the FAIL-SAFE deadline."""
        if self._alarm or self._down_since is None:
            return delay
        return min(delay, max(0.0, self._down_since + self.fail_safe_after_s - time.monotonic()))

    def _release(self) -> str:
        """The backlog is delivered: take the controller out of its safe state."""
        self.sink.fail_safe(False)
        self._engaged = self._alarm = False
        log.warning("fail-safe over, backlog delivered controller=%s address=%s", self.sink.name, self.sink.address)
        return "released"

    def _outage(self, exc: ControllerUnavailable, attempt_began: float) -> None:
        if self._down_since is None:
            self._down_since = attempt_began
            self.stats.outages += 1
            log.warning("controller unreachable controller=%s address=%s reason=%s buffering=outbox",
                        self.sink.name, self.sink.address, exc)
        self._check_deadline(time.monotonic())

    def _check_deadline(self, now: float) -> None:
        """Raise the FAIL-SAFE alarm (once per outage) when the outage has lasted ``fail_safe_after_s``."""
        if self._down_since is None:
            return
        down_s = now - self._down_since
        if not self._alarm and down_s >= self.fail_safe_after_s:
            self._alarm = True
            alarm = f"FAIL-SAFE: {self.sink.name} {self.sink.address} unreachable for {down_s:.0f} s"
            self.stats.fail_safe.append(alarm)
            log.error("%s; buffered in the outbox=%d; on reconnect the controller goes to its safe state (PLC: gate "
                      "held closed) until the backlog is delivered", alarm, self.outbox.count_pending(self.sink.name))

    def _outage_over(self, now: float) -> None:
        assert self._down_since is not None
        down_s = now - self._down_since
        self._down_since = None
        self.stats.longest_outage_s = max(self.stats.longest_outage_s, down_s)
        log.warning("controller reachable again controller=%s address=%s after_s=%.1f pending=%d",
                    self.sink.name, self.sink.address, down_s, self.outbox.count_pending(self.sink.name))


class Dispatcher:
    """Hands every decision to each controller's courier and reports it settled once all have answered.

    ``open`` opens every controller (failing fast, naming host:port) and starts the couriers, which first send
    what an earlier run left pending. ``on_settled(decision)`` runs once per decision put in this run, with
    ``decision.acks`` filled: at once without controllers, else from the courier thread of the last answer,
    or at ``close`` with ``"pending"`` for controllers that never answered (the outbox keeps those). An error
    in ``on_settled`` does not stop delivery: the first one is raised by ``close``.
    """

    def __init__(
        self,
        controllers: Sequence[DecisionSink],
        outbox: Outbox,
        on_settled: Callable[[Decision], None],
        fail_safe_after_s: float = 10.0,
    ):
        self.outbox = outbox
        self.on_settled = on_settled
        self.couriers = {c.name: Courier(c, outbox, self._on_ack, fail_safe_after_s) for c in controllers}
        self._waiting: dict[str, tuple[Decision, set[str]]] = {}
        self._lock = threading.Lock()
        self._errors: list[Exception] = []

    def open(self) -> None:
        opened: list[DecisionSink] = []
        try:
            for courier in self.couriers.values():
                courier.sink.open()
                opened.append(courier.sink)
        except BaseException:
            for sink in opened:
                sink.close()
            raise
        for courier in self.couriers.values():
            courier.start()

    def put(self, decision: Decision) -> None:
        """Queue ``decision`` for every controller (durably, before this returns)."""
        if not self.couriers:
            self._settle(decision)
            return
        with self._lock:
            self._waiting[decision.decision_id] = (decision, set(self.couriers))
        stored = self.outbox.put_all(list(self.couriers), decision)
        for name, courier in self.couriers.items():
            earlier = stored[name]
            if earlier is None:
                courier.notify()
            else:  # a replay of a decision an earlier run delivered: never sent twice
                courier.stats.already_delivered += 1
                self._answer(name, decision.decision_id, earlier)

    def _on_ack(self, controller: str, decision: Decision, ack: str) -> None:
        if not self._answer(controller, decision.decision_id, ack):
            self.couriers[controller].stats.resent += 1
            log.info("delivered from an earlier run controller=%s item=%s ack=%s", controller, decision.item_id, ack)

    def _answer(self, controller: str, decision_id: str, ack: str) -> bool:
        """Record one controller's answer; False when the decision is not from this run."""
        with self._lock:
            entry = self._waiting.get(decision_id)
            if entry is None:
                return False
            decision, waiting = entry
            decision.acks[controller] = ack
            waiting.discard(controller)
            settled = not waiting
            if settled:
                del self._waiting[decision_id]
        if settled:
            self._settle(decision)
        return True

    def _settle(self, decision: Decision) -> None:
        try:
            self.on_settled(decision)
        except Exception as exc:  # raised by close(), in the caller's thread
            log.error("settling failed item=%s decision_id=%s reason=%s", decision.item_id, decision.decision_id, exc)
            self._errors.append(exc)

    def close(self, drain_timeout_s: float) -> dict[str, DeliveryStats]:
        """Wait up to ``drain_timeout_s`` for the backlog, stop the couriers, settle what is left as pending."""
        deadline = time.monotonic() + drain_timeout_s
        for name, courier in self.couriers.items():
            if not courier.drain(max(0.0, deadline - time.monotonic())):
                log.error("delivery not finished controller=%s address=%s pending=%d: kept in the outbox %s "
                          "for the next start", name, courier.sink.address, self.outbox.count_pending(name),
                          self.outbox.path)
        stats = {name: courier.stop() for name, courier in self.couriers.items()}
        with self._lock:
            left = sorted(self._waiting.values(), key=lambda entry: entry[0].seq)
            self._waiting.clear()
        for decision, waiting in left:
            decision.acks.update({name: "pending" for name in waiting})
            self._settle(decision)
        if self._errors:
            raise self._errors[0]
        for name, courier in self.couriers.items():
            if courier.error is not None:
                raise RuntimeError(
                    f"delivery to {name} {courier.sink.address} stopped on an unexpected error "
                    f"({courier.error!r}); {stats[name].pending} decision(s) kept in the outbox {self.outbox.path}"
                ) from courier.error
        return stats
