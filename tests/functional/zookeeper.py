"""A throwaway ZooKeeper server for tests: its own JVM, temp dir and free loopback port.

Debian's ``zookeeper`` package (installed by tools/test-setup.sh) provides the jar; its
``zkServer.sh`` always runs /etc/zookeeper/conf/zoo.cfg on port 2181, so the JVM is started
directly with a config of our own. ``4lw.commands.whitelist=*`` is required: kazoo asks the
server's version with the ``envi`` four-letter word and gives up when it is disabled.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

JAR = Path("/usr/share/java/zookeeper.jar")
CONF_DIR = Path("/etc/zookeeper/conf")  # log4j/logback settings of the package


class ZooKeeperError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def four_letter(port: int, word: str, timeout: float = 1.0) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(word.encode())
        chunks = []
        while True:
            data = s.recv(4096)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


class ZooKeeper:
    def __init__(self, workdir: Path, port: int, proc: subprocess.Popen, log: Path) -> None:
        self.workdir = workdir
        self.port = port
        self.proc = proc
        self.log = log

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.workdir / "data", ignore_errors=True)


def start(workdir: Path, *, tick_ms: int = 500, timeout: float = 30.0) -> ZooKeeper:
    """Start a standalone server; tickTime bounds session timeouts to [2, 20] ticks."""
    java = shutil.which("java")
    if not JAR.exists() or java is None:
        raise ZooKeeperError(
            f"ZooKeeper is not installed ({JAR} or java missing): run tools/test-setup.sh")
    workdir = Path(workdir)
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg = workdir / "zoo.cfg"
    cfg.write_text("\n".join([
        f"tickTime={tick_ms}",
        f"dataDir={workdir / 'data'}",
        f"clientPort={port}",
        "clientPortAddress=127.0.0.1",
        "maxClientCnxns=0",
        "admin.enableServer=false",
        "4lw.commands.whitelist=*",
        "",
    ]))
    log = workdir / "zookeeper.log"
    env = dict(os.environ, ZOO_LOG_DIR=str(workdir), ZOO_LOG4J_PROP="WARN,CONSOLE")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [java, "-Xmx256m", f"-Dzookeeper.log.dir={workdir}",
             "-cp", f"{CONF_DIR}:{JAR}",
             "org.apache.zookeeper.server.quorum.QuorumPeerMain", str(cfg)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)
    zk = ZooKeeper(workdir, port, proc, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ZooKeeperError(f"ZooKeeper exited with {proc.returncode}: {zk.log_tail()}")
        try:
            if four_letter(port, "ruok") == "imok":
                return zk
        except OSError:
            pass
        time.sleep(0.1)
    zk.stop()
    raise ZooKeeperError(f"ZooKeeper did not answer on port {port} within {timeout:g} s: "
                         f"{zk.log_tail()}")

