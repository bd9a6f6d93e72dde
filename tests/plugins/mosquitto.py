"""A real Mosquitto broker per test: its own config, port and persistence directory.

Never touches the machine's broker on 1883. `MosquittoServer.stop()` / `start()` restart it on
the same port with the same persistence file, so persistent sessions and queued QoS 1
messages survive a restart (SIGTERM makes Mosquitto save its database; `stop(kill=True)`
is a crash and keeps only what an earlier save wrote). Readiness is Mosquitto's own
"running" log line, read from its stderr: no polling.

Use: `pytest_plugins = ["tests.plugins.mosquitto"]`, then the `mosquitto` fixture, or build
a `MosquittoServer(tmp_path)` yourself (e.g. with `extra_conf=["autosave_on_changes true"]`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import pytest

HOST = "127.0.0.1"


def find_mosquitto() -> str | None:
    """The mosquitto binary on PATH or in /usr/sbin, or None."""
    found = shutil.which("mosquitto")
    if found:
        return found
    return "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None


def free_port() -> int:
    """An ephemeral TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class MosquittoServer:
    """One Mosquitto process with a generated config in `workdir`."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        binary: str | None = None,
        extra_conf: Sequence[str] = (),
    ) -> None:
        found = binary or find_mosquitto()
        if found is None:
            raise FileNotFoundError("mosquitto not found (make services)")
        self.binary = found
        self.host = HOST
        self.port = port or free_port()
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        lines = [
            f"listener {self.port} {HOST}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            "max_queued_messages 100000",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
        ]
        if os.geteuid() == 0:
            # As root Mosquitto drops to user "mosquitto", which cannot write our temp dir.
            lines.append("user root")
        lines.extend(extra_conf)
        self.conf_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """The process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The running process id."""
        return self._proc.pid if self.running and self._proc is not None else None

    def start(self, timeout: float = 10.0) -> None:
        """Start and return once Mosquitto logged that it is running (listening)."""
        if self.running:
            raise RuntimeError("mosquitto already running")
        proc = subprocess.Popen(
            [self.binary, "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert proc.stderr is not None
        ready = threading.Event()
        reader = threading.Thread(
            target=_pump_log, args=(proc.stderr, self.log_path, ready), daemon=True
        )
        reader.start()
        self._proc, self._reader = proc, reader
        # `ready` is set on the "running" line, or on EOF if the process died first.
        if not ready.wait(timeout) or proc.poll() is not None:
            self.stop(kill=True)
            raise RuntimeError(f"mosquitto did not start; see {self.log_path}:\n{self.log_tail()}")

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """SIGTERM (saves the persistence db) or SIGKILL (a crash); wait for the exit."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
            self._reader = None
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self, *, kill: bool = False) -> None:
        """stop() then start() on the same port and persistence file."""
        self.stop(kill=kill)
        self.start()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the broker log (for failure messages)."""
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def publish(self, topic: str, payload: bytes, client_id: str = "pos-gateway") -> None:
        """Publish one message at QoS 1 as a POS gateway would; returns after the PUBACK.

        Blocking (a paho client with its own network thread): call it via asyncio.to_thread.
        """
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        try:
            client.publish(topic, payload, qos=1).wait_for_publish(timeout=10)
        finally:
            client.loop_stop()
            client.disconnect()


def _pump_log(stream: IO[bytes], path: Path, ready: threading.Event) -> None:
    # Drain stderr for the life of the process (a full pipe would block Mosquitto).
    with path.open("ab") as out:
        for line in iter(stream.readline, b""):
            out.write(line)
            out.flush()
            if b" running" in line:
                ready.set()
    ready.set()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoServer]:
    """A running broker on a free port; killed by pid at teardown."""
    if find_mosquitto() is None:
        pytest.skip("mosquitto binary not installed (make services)")
    server = MosquittoServer(tmp_path / "mosquitto")
    server.start()
    try:
        yield server
    finally:
        server.stop()
