"""Small real TCP peers for tests that must see exactly which bytes crossed the proxy.

Each is a listening socket on 127.0.0.1 served by a thread; they are real sockets talking
to the real `sluice` binary, not mocks of it.
"""
import hashlib
import socket
import threading
import time


def pattern_chunk(index, size=1 << 20):
    """Deterministic, incompressible-looking bytes: chunk `index` of a long stream."""
    seed = hashlib.sha256(index.to_bytes(8, "big")).digest()
    return (seed * (size // len(seed) + 1))[:size]


class Server:
    def __init__(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1024)
        self.port = self.listener.getsockname()[1]
        self.connections = []
        self.errors = []
        self._stop = False
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self):
        while not self._stop:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)
            threading.Thread(target=self._serve_safely, args=(connection,), daemon=True).start()

    def _serve_safely(self, connection):
        try:
            self.serve(connection)
        except OSError as error:
            self.errors.append(error)

    def serve(self, connection):
        raise NotImplementedError

    def close(self):
        self._stop = True
        self.listener.close()
        for connection in self.connections:
            try:
                connection.close()
            except OSError:
                pass


class HashingSink(Server):
    """Reads until end of stream, then answers `<byte count> <sha256>\\n` and closes:
    proves a byte-exact upload and that the client's FIN arrived (half-close)."""

    def serve(self, connection):
        digest = hashlib.sha256()
        count = 0
        while True:
            data = connection.recv(1 << 20)
            if not data:
                break
            digest.update(data)
            count += len(data)
        connection.sendall(f"{count} {digest.hexdigest()}\n".encode())
        connection.close()


class NeverReads(Server):
    """Accepts and holds connections without reading a byte."""

    def serve(self, connection):
        while not self._stop:
            time.sleep(0.1)


class SlowSender(Server):
    """Sends `chunks` chunks of `size` bytes with a pause between each, then closes."""

    def __init__(self, chunks=10, size=10_000, pause=0.15):
        self.chunks, self.size, self.pause = chunks, size, pause
        super().__init__()

    def serve(self, connection):
        for index in range(self.chunks):
            connection.sendall(bytes([index % 256]) * self.size)
            time.sleep(self.pause)
        connection.close()


class EchoServer(Server):
    """Echoes everything back; closes its side when the client's FIN arrives."""

    def serve(self, connection):
        while True:
            data = connection.recv(65536)
            if not data:
                break
            connection.sendall(data)
        connection.shutdown(socket.SHUT_WR)
        connection.close()
