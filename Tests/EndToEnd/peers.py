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


class RecordingBackend(Server):
    """A real HTTP/1.1 server that records every byte it receives, per connection, so a
    hostile test can assert exactly what reached the server (not only what the client saw).

    Each request is framed just enough to answer it (Content-Length or chunked); the answer
    is `200` with the request line as the body, or what `respond(request_head)` returns
    (raw bytes; None = never answer). `received()` is everything seen, in arrival order."""

    def __init__(self, respond=None):
        self.respond = respond
        self.log = []          # one bytearray per accepted connection
        self.heads = []        # every request head parsed, in order
        self.lock = threading.Lock()
        super().__init__()

    def received(self):
        with self.lock:
            return b"".join(bytes(chunk) for chunk in self.log)

    def connection_count(self):
        with self.lock:
            return len(self.log)

    def request_lines(self):
        with self.lock:
            return [head.split(b"\r\n", 1)[0].decode("latin-1") for head in self.heads]

    def serve(self, connection):
        with self.lock:
            record = bytearray()
            self.log.append(record)
        pending = b""
        while True:
            data = connection.recv(65536)
            if not data:
                break
            with self.lock:
                record += data
            pending += data
            while True:
                request, pending = self._take_request(pending)
                if request is None:
                    break
                head = request.split(b"\r\n\r\n", 1)[0]
                with self.lock:
                    self.heads.append(head)
                answer = self.respond(head) if self.respond else self.echo_line(head)
                if answer is None:
                    continue
                connection.sendall(answer)
        try:
            connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        connection.close()

    @staticmethod
    def echo_line(head):
        body = head.split(b"\r\n", 1)[0] + b"\n"
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    @staticmethod
    def _take_request(buffer):
        """Splits one whole request off the front of `buffer` (None when incomplete)."""
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return None, buffer
        head = buffer[:end]
        body_start = end + 4
        fields = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            fields[name.strip().lower()] = value.strip()
        if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            position = body_start
            while True:
                line_end = buffer.find(b"\r\n", position)
                if line_end < 0:
                    return None, buffer
                size = int(buffer[position:line_end].split(b";")[0], 16)
                position = line_end + 2
                if size == 0:
                    trailer_end = buffer.find(b"\r\n\r\n", position - 2)
                    if trailer_end < 0:
                        return None, buffer
                    position = trailer_end + 4
                    return buffer[:position], buffer[position:]
                if len(buffer) < position + size + 2:
                    return None, buffer
                position += size + 2
        length = int(fields.get(b"content-length", b"0") or 0)
        if len(buffer) < body_start + length:
            return None, buffer
        return buffer[:body_start + length], buffer[body_start + length:]


class RawClient:
    """A client on a plain socket: sends exactly the bytes given, reads what comes back."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0):
        self.socket = socket.create_connection((host, port), timeout=timeout)

    def send(self, data):
        self.socket.sendall(data)

    def half_close(self):
        self.socket.shutdown(socket.SHUT_WR)

    def read_responses(self, count, timeout=5.0):
        """Reads until `count` complete responses arrived (by Content-Length), the peer
        closed, or `timeout` passed; returns (responses as bytes, closed)."""
        deadline = time.monotonic() + timeout
        data = b""
        closed = False
        while len(split_responses(data)[0]) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.socket.settimeout(remaining)
            try:
                chunk = self.socket.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
        return split_responses(data)[0], closed

    def read_until_closed(self, timeout=5.0):
        """Everything until the peer closes (or `timeout`); returns (bytes, how) with how
        one of "fin", "reset", "timeout"."""
        deadline = time.monotonic() + timeout
        data = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return data, "timeout"
            self.socket.settimeout(remaining)
            try:
                chunk = self.socket.recv(65536)
            except socket.timeout:
                return data, "timeout"
            except ConnectionResetError:
                return data, "reset"
            if not chunk:
                return data, "fin"
            data += chunk

    def close(self):
        self.socket.close()


def split_responses(data):
    """Splits HTTP/1.1 responses framed by Content-Length (or with none, when the body is
    empty, as for 1xx, 204 and 304). Returns (complete responses, rest)."""
    responses = []
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return responses, data
        head = data[:end]
        length = 0
        status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
        # RFC 9112 §6.3: 1xx, 204 and 304 responses have no body, whatever their fields say.
        for line in ([] if status < 200 or status in (204, 304) else head.split(b"\r\n")[1:]):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        total = end + 4 + length
        if len(data) < total:
            return responses, data
        responses.append(data[:total])
        data = data[total:]


def status_of(response):
    return int(response.split(b" ", 2)[1])
