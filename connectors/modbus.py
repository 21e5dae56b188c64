"""The PLC reject gate over Modbus TCP: the sink that acts on decisions, and a simulator of the PLC.

The gate and the PLC share one block of holding registers, :data:`PLC_REGISTER_MAP` (also in
``docs/plc-register-map.md``). The gate writes registers 0-8 of each decision in one ``write_registers``
call (function 16) and ``FAIL_SAFE`` (9) on its own; the PLC acts once per decision id on every write that
covers ``COMMAND`` and owns registers 10-15.

Example:
    >>> with PlcSimulator() as plc, ModbusRejectGate("127.0.0.1", plc.port, {"good": 0, "scratch": 1}) as gate:
    ...     gate.send(decision)
    'ok'
    >>> plc.rejects, plc.passes
    (1, 0)
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from pymodbus.client import ModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from connectors.records import Decision
from connectors.sinks import ControllerUnavailable, DecisionSink

log = logging.getLogger("fusionline.plc")

MAP_VERSION = 2
LABEL_UNKNOWN = 0xFFFF
ID_WORDS = 4  # a decision id is 64 bits: four registers, most significant word first


class HR(enum.IntEnum):
    """Holding-register addresses of the reject gate (see :data:`PLC_REGISTER_MAP`)."""

    WATCHDOG = 0
    SEQ = 1
    COMMAND = 2
    LABEL_CODE = 3
    CONFIDENCE = 4
    DECISION_ID_0 = 5
    DECISION_ID_1 = 6
    DECISION_ID_2 = 7
    DECISION_ID_3 = 8
    FAIL_SAFE = 9
    REJECT_COUNT = 10
    PASS_COUNT = 11
    GATE_STATUS = 12
    ACK_SEQ = 13
    MAP_VERSION = 14
    DUPLICATE_COUNT = 15


class GateStatus(enum.IntEnum):
    """Values of ``GATE_STATUS``."""

    READY = 0
    FAULT = 1  # the PLC's own fail-safe: gate closed, commands refused
    HELD_CLOSED = 2  # the gate wrote FAIL_SAFE = 1: gate closed, commands still recorded


@dataclass(frozen=True)
class Register:
    """One holding register: who writes it and what it means."""

    address: HR
    writer: str  # "gate" (the controller, i.e. fusionline) or "plc"
    meaning: str


PLC_REGISTER_MAP: dict[HR, Register] = {
    r.address: r
    for r in (
        Register(HR.WATCHDOG, "gate", "heartbeat: +1 (mod 65536) with every write; the PLC can watch it change"),
        Register(HR.SEQ, "gate", "sequence number of the decided item, low 16 bits"),
        Register(HR.COMMAND, "gate", "0 = pass, 1 = reject; a write covering it is one actuation per decision id"),
        Register(HR.LABEL_CODE, "gate", f"code of the label (gate's `label_codes`); {LABEL_UNKNOWN} = no code"),
        Register(HR.CONFIDENCE, "gate", "confidence of the label x 1000 (0..1000)"),
        Register(HR.DECISION_ID_0, "gate", "decision id, bits 63..48; a command whose id was executed already "
                 "is ignored (id 0: always executed)"),
        Register(HR.DECISION_ID_1, "gate", "decision id, bits 47..32"),
        Register(HR.DECISION_ID_2, "gate", "decision id, bits 31..16"),
        Register(HR.DECISION_ID_3, "gate", "decision id, bits 15..0"),
        Register(HR.FAIL_SAFE, "gate", "1 = hold the gate closed (every part rejected), 0 = resume; "
                 "written alone, never with a command"),
        Register(HR.REJECT_COUNT, "plc", "reject commands executed (mod 65536)"),
        Register(HR.PASS_COUNT, "plc", "pass commands executed (mod 65536)"),
        Register(HR.GATE_STATUS, "plc", "0 = ready; 1 = fault (gate closed, writes refused); "
                 "2 = held closed by FAIL_SAFE (commands still recorded)"),
        Register(HR.ACK_SEQ, "plc", "SEQ of the last command executed (valid once a counter is > 0)"),
        Register(HR.MAP_VERSION, "plc", f"version of this register map ({MAP_VERSION})"),
        Register(HR.DUPLICATE_COUNT, "plc", "commands ignored because their decision id was executed already"),
    )
}
GATE_WRITABLE = frozenset(r.address for r in PLC_REGISTER_MAP.values() if r.writer == "gate")
DECISION_BLOCK = range(HR.WATCHDOG, HR.DECISION_ID_0 + ID_WORDS)  # written in one request per decision


def register_map_markdown() -> str:
    """The register map as a Markdown table (the one in ``docs/plc-register-map.md``)."""
    rows = ["| address | name | written by | meaning |", "|---|---|---|---|"]
    for r in PLC_REGISTER_MAP.values():
        rows.append(f"| {r.address.value} | `{r.address.name}` | {r.writer} | {r.meaning} |")
    return "\n".join(rows) + "\n"


class ModbusRejectGate(DecisionSink):
    """Sends each decision to the PLC reject gate: one ``write_registers`` of registers 0-8.

    Args:
        host, port: the PLC's Modbus TCP server.
        label_codes: label -> code written to ``LABEL_CODE`` (0..65534); other labels are written as 65535.
        device_id: Modbus device (unit) id of the PLC.
        timeout_s: connect and response timeout; ``open`` fails after about this long.
        retries: resends of a request that got no answer.

    ``send`` is thread-safe (one lock around the connection) and reconnects when the connection was dropped.
    When the PLC cannot be reached or does not answer it raises :class:`ControllerUnavailable`; the caller
    sends the same decision again later, and the PLC ignores the repeat by its decision id.

    Example:
        >>> gate = ModbusRejectGate("10.0.0.20", 502, {"good": 0, "scratch": 1, "dent": 2})
        >>> gate.open(); gate.send(decision); gate.close()
        'ok'
    """

    name = "plc"

    def __init__(
        self,
        host: str,
        port: int = 502,
        label_codes: Mapping[str, int] | None = None,
        device_id: int = 1,
        timeout_s: float = 2.0,
        retries: int = 1,
    ):
        codes = dict(label_codes or {})
        bad = {k: v for k, v in codes.items() if not (isinstance(v, int) and 0 <= v < LABEL_UNKNOWN)}
        if bad:
            raise ValueError(f"label codes must be integers 0..{LABEL_UNKNOWN - 1}, got {bad}")
        self.host, self.port = host, port
        self.label_codes = codes
        self.device_id = device_id
        self.timeout_s = timeout_s
        self.retries = retries
        self._client: ModbusTcpClient | None = None
        self._lock = threading.Lock()
        self._watchdog = 0
        self._uncoded: set[str] = set()  # labels without a code, warned about once

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def open(self) -> None:
        """Connect and read the PLC's registers; raises :class:`ControllerUnavailable` naming host:port."""
        self.close()
        with self._lock:
            self._connect()

    def _connect(self) -> None:
        """Connect (under the lock), check the map version and continue the PLC's watchdog."""
        client = ModbusTcpClient(self.host, port=self.port, timeout=self.timeout_s, retries=self.retries)
        if not client.connect():
            raise ControllerUnavailable(
                f"PLC at {self.address} is unreachable: no Modbus TCP server accepted a connection "
                f"within {self.timeout_s:g} s"
            )
        try:
            regs = self._read_all(client)
        except ControllerUnavailable:
            client.close()
            raise
        if regs[HR.MAP_VERSION] != MAP_VERSION:
            client.close()
            raise ControllerUnavailable(
                f"PLC at {self.address} has register map version {regs[HR.MAP_VERSION]}, "
                f"this gate speaks {MAP_VERSION}"
            )
        self._client = client
        self._watchdog = regs[HR.WATCHDOG]
        log.info(
            "gate connected plc=%s rejects=%d passes=%d status=%d",
            self.address, regs[HR.REJECT_COUNT], regs[HR.PASS_COUNT], regs[HR.GATE_STATUS],
        )

    def _read_all(self, client: ModbusTcpClient) -> list[int]:
        try:
            rr = client.read_holding_registers(0, count=len(HR), device_id=self.device_id)
        except (ModbusException, OSError) as exc:
            raise ControllerUnavailable(f"PLC at {self.address} did not answer a register read: {exc}") from None
        if rr.isError():
            raise ControllerUnavailable(
                f"PLC at {self.address} refused to read registers 0-{len(HR) - 1}: "
                f"{_exception_text(rr.exception_code)}"
            )
        return list(rr.registers)

    def send(self, decision: Decision) -> str:
        """Write the decision's registers: ``"ok"``, or ``"error: ..."`` with the PLC's refusal.

        Raises :class:`ControllerUnavailable` (naming the item and host:port) when the PLC cannot be reached.
        """
        with self._lock:
            if self._client is None:  # the connection broke earlier: a PLC restart, a cable
                self._connect()
            self._watchdog = (self._watchdog + 1) & 0xFFFF
            rr = self._request(decision.item_id, HR.WATCHDOG, self._encode(decision, self._watchdog))
        if rr.isError():
            text = f"error: PLC refused the write ({_exception_text(rr.exception_code)})"
            log.warning("gate write refused plc=%s item=%s reason=%s", self.address, decision.item_id, text)
            return text
        return "ok"

    def fail_safe(self, engaged: bool) -> None:
        """Hold the gate closed (every part rejected) or release it: writes ``FAIL_SAFE``."""
        with self._lock:
            if self._client is None:
                self._connect()
            rr = self._request(f"FAIL_SAFE={int(engaged)}", HR.FAIL_SAFE, [int(engaged)])
        if rr.isError():
            raise ControllerUnavailable(
                f"PLC at {self.address} refused FAIL_SAFE={int(engaged)}: {_exception_text(rr.exception_code)}"
            )
        log.warning("gate fail-safe plc=%s engaged=%s", self.address, engaged)

    def _request(self, what: str, address: int, values: list[int]) -> ModbusPDU:
        """One write (under the lock); a dropped, reset or silent connection is closed and raised as unavailable.

        The socket's own errors (``ConnectionResetError`` when the PLC goes down mid-write, ``BrokenPipeError``)
        reach here as ``OSError``, not as pymodbus exceptions; they mean the same thing.
        """
        try:
            return self._write(address, values)
        except (ModbusException, OSError) as exc:
            assert self._client is not None
            self._client.close()
            self._client = None
            raise ControllerUnavailable(f"PLC at {self.address} did not take {what}: {exc}") from None

    def _encode(self, d: Decision, watchdog: int) -> list[int]:
        code = self.label_codes.get(d.label, LABEL_UNKNOWN)
        if code == LABEL_UNKNOWN and d.label not in self._uncoded:
            self._uncoded.add(d.label)
            log.warning("gate label without code item=%s label=%s code=%d", d.item_id, d.label, LABEL_UNKNOWN)
        confidence = d.confidence if math.isfinite(d.confidence) else 0.0
        ident = int(d.decision_id, 16) if d.decision_id else 0
        words = [(ident >> (16 * (ID_WORDS - 1 - i))) & 0xFFFF for i in range(ID_WORDS)]
        return [watchdog, d.seq & 0xFFFF, int(bool(d.reject)), code, max(0, min(1000, round(confidence * 1000))),
                *words]

    def _write(self, address: int, values: list[int]) -> ModbusPDU:
        """The only path to the PLC's registers: refuses any register outside :data:`GATE_WRITABLE`."""
        outside = sorted(set(range(address, address + len(values))) - GATE_WRITABLE)
        if outside:
            raise PermissionError(f"registers {outside} of PLC {self.address} are not writable by the gate")
        assert self._client is not None
        return self._client.write_registers(address, values, device_id=self.device_id)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _exception_text(code: int) -> str:
    try:
        return f"Modbus exception {code} {ExcCodes(code).name}"
    except ValueError:
        return f"Modbus exception {code}"


class PlcSimulator:
    """A Modbus TCP server that behaves like the reject gate's PLC (register map :data:`PLC_REGISTER_MAP`).

    Every write covering ``COMMAND`` is executed once per decision id: the reject or pass counter goes up,
    ``ACK_SEQ`` takes the written ``SEQ``, and the command is appended to :attr:`commands`; a command whose
    id is among the last ``dedup_window`` executed is acknowledged but ignored (:attr:`duplicates`).
    Registers 10-15 are read-only to clients. In the PLC's own fault (:attr:`fail_safe` = True) writes are
    refused with exception 4 (device failure); while the gate holds it closed (:attr:`held_closed`, register
    ``FAIL_SAFE``) every part is rejected and commands are still recorded. ``stop`` and ``start`` again on
    the same port keep the counters and executed ids, like a PLC's retentive memory across a restart.

    Args:
        host: interface to listen on.
        port: TCP port; 0 picks a free one (read it from :attr:`port` after ``start``).
        device_id: the Modbus device id it answers to.
        history: how many executed commands :attr:`commands` keeps.
        dedup_window: how many executed decision ids are remembered to ignore repeats.

    Example (background, for tests)::

        with PlcSimulator() as plc:        # start() ... stop()
            gate = ModbusRejectGate("127.0.0.1", plc.port)

    Example (foreground, for the CLI; Ctrl-C stops it)::

        PlcSimulator(port=5020).run_forever()
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        device_id: int = 1,
        history: int = 100_000,
        dedup_window: int = 4096,
    ):
        self.host = host
        self.port = port
        self.device_id = device_id
        #: the last ``history`` commands executed, oldest first: (seq, command, label_code, confidence x1000)
        self.commands: deque[tuple[int, int, int, int]] = deque(maxlen=history)
        self.fail_safe = False
        #: the gate wrote FAIL_SAFE = 1: the gate is closed until it writes 0
        self.held_closed = False
        #: times the gate wrote FAIL_SAFE = 1
        self.fail_safe_requests = 0
        #: commands ignored because their decision id had been executed
        self.duplicates = 0
        self._lock = threading.Lock()
        self._counts = [0, 0]  # passes, rejects
        self._ack_seq = 0
        self._executed: deque[int] = deque(maxlen=dedup_window)
        self._executed_set: set[int] = set()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def rejects(self) -> int:
        """Reject commands executed since the simulator was created."""
        return self._counts[1]

    @property
    def passes(self) -> int:
        """Pass commands executed since the simulator was created."""
        return self._counts[0]

    def start(self, timeout_s: float = 5.0) -> PlcSimulator:
        """Serve in a background thread; returns once the port accepts connections."""
        if self._thread is not None:
            raise RuntimeError(f"PLC simulator on {self.host}:{self.port} is already running")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="plc-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"PLC simulator on {self.host}:{self.port} did not start within {timeout_s} s")
        if self._error is not None:
            self._thread = None
            raise self._error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(); the thread ends here
            self._error = exc
            self._ready.set()

    def run_forever(self) -> None:
        """Serve in the calling thread until Ctrl-C or :meth:`stop` from another thread."""
        try:
            asyncio.run(self._serve())
        except KeyboardInterrupt:
            log.info("simulator interrupted plc=%s:%d", self.host, self.port)

    def stop(self) -> None:
        """Stop serving and close the clients' connections."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    async def _serve(self) -> None:
        device = SimDevice(
            id=self.device_id,
            simdata=[
                SimData(HR.WATCHDOG, count=len(GATE_WRITABLE), values=0, datatype=DataType.REGISTERS),
                SimData(
                    HR.REJECT_COUNT, values=[0, 0, 0, 0, MAP_VERSION, 0], datatype=DataType.REGISTERS, readonly=True
                ),
            ],
            action=self._action,
        )
        server = ModbusTcpServer(device, address=(self.host, self.port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:
            raise OSError(f"PLC simulator cannot listen on {self.host}:{self.port}: {exc}") from None
        self.port = server.transport.sockets[0].getsockname()[1]
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        log.info(
            "simulator listening plc=%s:%d device_id=%d map_version=%d",
            self.host, self.port, self.device_id, MAP_VERSION,
        )
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            await server.shutdown()
            self._loop = self._stopping = None
            log.info(
                "simulator stopped plc=%s:%d rejects=%d passes=%d", self.host, self.port, self.rejects, self.passes
            )

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Runs on every access: executes commands and keeps the PLC-owned registers current."""
        with self._lock:
            new = {HR(address + i): int(v) for i, v in enumerate(set_values or [])}
            if HR.FAIL_SAFE in new:
                refused = self._hold(new)
                if refused is not None:
                    return refused
            if HR.COMMAND in new:
                if self.fail_safe:
                    log.warning("simulator refused write in fail-safe plc=%s:%d", self.host, self.port)
                    return ExcCodes.DEVICE_FAILURE
                regs = {r: new.get(r, registers[r - start_address]) for r in DECISION_BLOCK}
                if regs[HR.COMMAND] not in (0, 1) or regs[HR.CONFIDENCE] > 1000:
                    return ExcCodes.ILLEGAL_VALUE
                self._execute(regs)
            status = GateStatus.READY
            if self.fail_safe or self.held_closed:
                status = GateStatus.FAULT if self.fail_safe else GateStatus.HELD_CLOSED
            owned = {
                HR.REJECT_COUNT: self._counts[1] & 0xFFFF,
                HR.PASS_COUNT: self._counts[0] & 0xFFFF,
                HR.GATE_STATUS: int(status),
                HR.ACK_SEQ: self._ack_seq,
                HR.MAP_VERSION: MAP_VERSION,
                HR.DUPLICATE_COUNT: self.duplicates & 0xFFFF,
            }
        for reg, value in owned.items():
            registers[reg - start_address] = value
        return None

    def _hold(self, new: dict[HR, int]) -> ExcCodes | None:
        """The gate's FAIL_SAFE write: alone, 0 or 1."""
        if len(new) != 1 or new[HR.FAIL_SAFE] not in (0, 1):
            return ExcCodes.ILLEGAL_VALUE
        if new[HR.FAIL_SAFE] and not self.held_closed:
            self.fail_safe_requests += 1
        self.held_closed = bool(new[HR.FAIL_SAFE])
        log.warning("simulator gate %s plc=%s:%d", "held closed" if self.held_closed else "released",
                    self.host, self.port)
        return None

    def _execute(self, regs: dict[HR, int]) -> None:
        """One command, unless its decision id was executed already."""
        ident = 0
        for r in range(HR.DECISION_ID_0, HR.DECISION_ID_0 + ID_WORDS):
            ident = (ident << 16) | regs[HR(r)]
        if ident and ident in self._executed_set:
            self.duplicates += 1
            log.info("simulator ignored repeated decision id=%016x seq=%d", ident, regs[HR.SEQ])
            return
        if ident:
            if len(self._executed) == self._executed.maxlen:
                self._executed_set.discard(self._executed[0])
            self._executed.append(ident)
            self._executed_set.add(ident)
        self.commands.append((regs[HR.SEQ], regs[HR.COMMAND], regs[HR.LABEL_CODE], regs[HR.CONFIDENCE]))
        self._counts[regs[HR.COMMAND]] += 1
        self._ack_seq = regs[HR.SEQ]
        log.debug(
            "simulator command seq=%d action=%s label_code=%d confidence_milli=%d id=%016x",
            regs[HR.SEQ], "reject" if regs[HR.COMMAND] or self.held_closed else "pass",
            regs[HR.LABEL_CODE], regs[HR.CONFIDENCE], ident,
        )

    def __enter__(self) -> PlcSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
