"""A TCP proxy a test can cut like a network partition: traffic is dropped, never refused.

A clean close (or a refused connect) tells a ZooKeeper client at once that the server is
gone; a partition tells it nothing: its pings go unanswered until its own timers give up and
the server expires the session meanwhile. ``cut()`` makes the proxy swallow every byte in
both directions on open connections and hold new connections open without ever reaching the
server; ``heal()`` closes what was held during the cut and forwards new connections again.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class Proxy:
    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._held: list[socket.socket] = []  # sockets accepted during a cut
        self._open: list[socket.socket] = []
        self.dropped = 0  # bytes swallowed while cut
        threading.Thread(target=self._accept, name="tcpproxy-accept", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cut(self) -> None:
        self._cut.set()

    def heal(self) -> None:
        with self._lock:
            held, self._held = self._held, []
        for s in held:
            with contextlib.suppress(OSError):
                s.close()
        self._cut.clear()

    def close(self) -> None:
        """Stop for good: the port refuses connections, open ones are closed."""
        self._closed.set()
        # close() alone neither wakes the thread blocked in accept() nor stops the kernel
        # from completing connections for it: one more would be forwarded. shutdown() does.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = self._held + self._open
        for s in sockets:
            # shutdown() ends the connection even while a pump thread is blocked in recv()
            # on it (close() alone would wait for that recv, and the reply would still pass).
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._closed.is_set():
                client.close()
                return
            if self._cut.is_set():
                with self._lock:
                    self._held.append(client)  # read by nobody: the peer sees silence
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._open += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True,
                                 name="tcpproxy-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self._cut.is_set():
                    self.dropped += len(data)
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # Only a connection that ended by itself is closed; a cut one stays silent.
            if not self._cut.is_set():
                for s in (src, dst):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
