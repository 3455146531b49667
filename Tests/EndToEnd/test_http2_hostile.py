"""End-to-end: hostile HTTP/2 peers against `sluice run` (explicit mode, no root), each bounded
in CPU and memory and answered with the RFC 9113 error, never a crash. Frames are written with
Python `h2`'s own framing and HPACK libraries (hyperframe, hpack) so that they can be as wrong as
an attacker makes them. What reached the server is asserted on nginx's access log; that Sluice
stays well is asserted by a normal request on a fresh connection and by its resident memory.
Starts: the sluice binary, nginx with an h2c listener, Python raw HTTP/2 clients."""
import socket
import time

import hpack
import pytest
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame,
                              RstStreamFrame, SettingsFrame, WindowUpdateFrame)

from conftest import Nginx, free_port
from test_hostile import config, write_policy
from test_http2 import RULES, curl2, h2c_nginx, requested_paths

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PROTOCOL_ERROR, REFUSED_STREAM, CANCEL = 0x1, 0x7, 0x8


class RawH2:
    """A client that writes frames as given and reads whatever comes back."""

    def __init__(self, port, settings=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.encoder = hpack.Encoder()
        self.buffer = b""
        self.closed = False
        self.send(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())

    def send(self, data):
        self.sock.sendall(data)

    def block(self, path, method="GET", extra=()):
        return self.encoder.encode([(":method", method), (":scheme", "http"), (":authority", "backend"),
                                    (":path", path), *extra])

    def headers(self, stream, block, end_stream=True, end_headers=True):
        flags = (["END_STREAM"] if end_stream else []) + (["END_HEADERS"] if end_headers else [])
        return HeadersFrame(stream, data=block, flags=flags).serialize()

    def frames(self, timeout=2.0, until=None):
        """Frames read until `until(frame)` is true, the peer closes, or `timeout` passes."""
        frames = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.closed:
            while len(self.buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
                if len(self.buffer) < 9 + length:
                    break
                frame.parse_body(memoryview(self.buffer[9:9 + length]))
                self.buffer = self.buffer[9 + length:]
                frames.append(frame)
                if until and until(frame):
                    return frames
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                break
            except ConnectionResetError:
                data = b""
            if not data:
                self.closed = True
            self.buffer += data
        return frames

    def close(self):
        self.sock.close()


@pytest.fixture
def stack(workdir, start_sluice):
    """nginx (h2c) behind sluice under RULES; yields (sluice port, nginx, proxy)."""
    nginx = h2c_nginx(workdir)
    try:  # (also when sluice fails to start: nginx is stopped either way)
        (workdir / "nginx" / "www" / "big.bin").write_bytes(b"z" * (8 << 20))
        write_policy(workdir, nginx.port, RULES + """              - {method: GET, path: "/files/.*"}\n""")
        listen = free_port()
        proxy = start_sluice(config(workdir, listen, nginx.port))
        yield listen, nginx, proxy
    finally:
        nginx.stop()


def resident_kib(proxy):
    for line in open(f"/proc/{proxy.process.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def cpu_seconds(proxy):
    fields = open(f"/proc/{proxy.process.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100


def still_serves(port, nginx, proxy):
    assert proxy.process.poll() is None, "sluice is alive"
    code, version, body = curl2(port, "/api/after")
    assert (code, version, body) == ("200", "2", b"api /api/after\n")


def served(nginx, fragment):
    return [line for line in nginx.access_lines() if fragment in line]


def eventually_served(nginx, fragment, timeout=2.0):
    """`served`, given nginx the moment it takes to log a request it has answered."""
    deadline = time.monotonic() + timeout
    while not served(nginx, fragment) and time.monotonic() < deadline:
        time.sleep(0.02)
    return served(nginx, fragment)


def test_rapid_reset_is_bounded(stack):
    """CVE-2023-44487: streams opened and reset at once, thousands of times."""
    port, nginx, proxy = stack
    before = cpu_seconds(proxy)
    client = RawH2(port)
    burst = b"".join(client.headers(stream, client.block(f"/api/rr/{stream}"))
                     + RstStreamFrame(stream, error_code=CANCEL).serialize() for stream in range(1, 20_001, 2))
    try:
        client.send(burst)
    except (BrokenPipeError, ConnectionResetError):
        pass
    frames = client.frames(timeout=3, until=lambda f: isinstance(f, GoAwayFrame))
    goaways = [f for f in frames if isinstance(f, GoAwayFrame)]
    assert goaways, "past the reset rate limit the connection ends with GOAWAY"
    client.close()
    time.sleep(0.3)
    assert len(served(nginx, "/api/rr/")) <= 1100, "at most the reset burst reached the server"
    assert cpu_seconds(proxy) - before < 3.0
    still_serves(port, nginx, proxy)


def test_continuation_flood_ends_the_connection(stack):
    port, nginx, proxy = stack
    client = RawH2(port)
    first = client.block("/api/flood")
    flood = client.headers(1, first, end_stream=True, end_headers=False) + b"".join(
        ContinuationFrame(1, data=client.encoder.encode([(f"x-f{i}", "v")])).serialize() for i in range(2000))
    try:
        client.send(flood)
    except (BrokenPipeError, ConnectionResetError):
        pass
    client.frames(timeout=3)
    assert client.closed, "the connection is closed"
    client.close()
    assert not served(nginx, "/api/flood")
    still_serves(port, nginx, proxy)


def status_of(client, frames, stream):
    """The :status of the first HEADERS frame on `stream` (None without one). Every HEADERS
    frame is decoded, in order, once: HPACK's table depends on all of them."""
    found = None
    for frame in frames:
        if isinstance(frame, HeadersFrame):
            status = dict(client.decoder.decode(frame.data)).get(":status")
            if frame.stream_id == stream and found is None:
                found = status
    return found


def answer_to(client, stream):
    """The frames up to `stream`'s END_STREAM, and that stream's :status."""
    frames = client.frames(timeout=3, until=lambda f: f.stream_id == stream and "END_STREAM" in f.flags)
    return status_of(client, frames, stream), frames


def test_hpack_bomb_is_answered_431_and_stays_bounded(stack):
    """A header block of a few hundred bytes that decodes to ~1 MB (one 4 KB table entry
    referenced again and again): decoded and dropped, answered 431 (RFC 9113 §10.5.1), never
    sent on; the connection goes on (HPACK stayed in step)."""
    port, nginx, proxy = stack
    client = RawH2(port)
    client.decoder = hpack.Decoder()
    # The seed puts x-bomb last into the decoder's table: dynamic index 62.
    client.send(client.headers(1, client.block("/api/seed", extra=[("x-bomb", "a" * 4000)])))
    # :method GET and :scheme http from the static table, :path and :authority literal (a
    # request without an authority is a stream error of its own), then x-bomb 250 times.
    bomb = b"\x82\x86" + b"\x04\x09/api/bomb" + b"\x01\x07backend" + b"\xbe" * 250
    assert len(bomb) < 300
    client.send(client.headers(3, bomb))
    status, frames = answer_to(client, 3)
    assert status == "431", [type(f).__name__ for f in frames]
    # The same connection still carries requests: the decoder's table is what the client's is.
    client.send(client.headers(5, client.block("/api/next")))
    status, frames = answer_to(client, 5)
    assert status == "200"
    client.close()
    assert eventually_served(nginx, "/api/next") and not served(nginx, "/api/bomb")
    assert resident_kib(proxy) < 64 * 1024
    answered = [r for r in proxy.flow_records() if r.get("l7", {}).get("http", {}).get("code") == 431]
    assert answered and answered[0]["l7"]["type"] == "RESPONSE"
    still_serves(port, nginx, proxy)


def test_an_oversized_head_with_a_body_is_answered_431_and_its_body_goes_nowhere(stack):
    """A request head past the limits that announces a body, then sends it: answered 431,
    neither head nor body reaches nginx, and the connection carries the next stream."""
    port, nginx, proxy = stack
    client = RawH2(port)
    client.decoder = hpack.Decoder()
    fields = [(f"x-field-{index}", "v") for index in range(300)]
    client.send(client.headers(1, client.block("/api/upload", method="POST", extra=fields), end_stream=False))
    client.send(DataFrame(1, data=b"smuggled body " * 100, flags=["END_STREAM"]).serialize())
    status, frames = answer_to(client, 1)
    assert status == "431", [type(f).__name__ for f in frames]
    client.send(client.headers(3, client.block("/api/after-upload")))
    status, frames = answer_to(client, 3)
    assert status == "200"
    client.close()
    assert not served(nginx, "/api/upload") and served(nginx, "/api/after-upload")
    still_serves(port, nginx, proxy)


def test_too_many_header_fields_from_curl_are_answered_431(stack):
    """300 fields (the limit is 256) from a real client: 431, nothing reaches nginx."""
    port, nginx, proxy = stack
    fields = [arg for index in range(300) for arg in ("-H", f"x-field-{index}: {index}")]
    code, version, body = curl2(port, "/api/many", *fields)
    assert (code, version) == ("431", "2"), body
    assert body == b"Request header fields too large\r\n"
    assert not served(nginx, "/api/many")
    still_serves(port, nginx, proxy)


@pytest.mark.parametrize("frame", ["settings", "ping"])
def test_control_frame_floods_from_a_peer_that_never_reads(stack, frame):
    port, nginx, proxy = stack
    start = resident_kib(proxy)
    client = RawH2(port)
    one = SettingsFrame(0).serialize() if frame == "settings" else PingFrame(0, opaque_data=b"12345678").serialize()
    chunk = one * 10_000
    client.sock.settimeout(0.5)
    sent = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            client.sock.sendall(chunk)
            sent += len(chunk)
        except (socket.timeout, BrokenPipeError, ConnectionResetError):
            break
    # The peer's writes stop (its acknowledgements are not read, so the proxy stops reading
    # it) or the connection is closed: either way the proxy holds little.
    assert resident_kib(proxy) - start < 32 * 1024, f"sent {sent} bytes"
    client.close()
    still_serves(port, nginx, proxy)


def test_a_peer_that_never_opens_its_window_holds_one_window(stack):
    port, nginx, proxy = stack
    start = resident_kib(proxy)
    client = RawH2(port, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    client.send(client.headers(1, client.block("/files/big.bin")))
    frames = client.frames(timeout=1.5)
    assert any(isinstance(f, HeadersFrame) and f.stream_id == 1 for f in frames)
    assert sum(len(f.data) for f in frames if isinstance(f, DataFrame)) == 0
    assert resident_kib(proxy) - start < 8 * 1024, "at most a window or two of the 8 MiB body is held"
    # Opening the window lets the rest through.
    client.send(WindowUpdateFrame(1, window_increment=8 << 20).serialize()
                + WindowUpdateFrame(0, window_increment=8 << 20).serialize()
                + SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 20}).serialize())
    got = 0
    deadline = time.monotonic() + 10
    while got < (8 << 20) and time.monotonic() < deadline:
        got += sum(len(f.data) for f in client.frames(timeout=0.2) if isinstance(f, DataFrame))
    assert got == 8 << 20
    client.close()
    still_serves(port, nginx, proxy)


def test_more_streams_than_allowed_are_refused(stack):
    port, nginx, proxy = stack
    client = RawH2(port)
    client.frames(timeout=0.3)  # the proxy's SETTINGS (SETTINGS_MAX_CONCURRENT_STREAMS 100)
    client.send(b"".join(client.headers(stream, client.block(f"/api/many/{stream}"))
                         for stream in range(1, 301, 2)))
    frames = client.frames(timeout=3)
    refused = {f.stream_id for f in frames if isinstance(f, RstStreamFrame)
               and f.error_code in (REFUSED_STREAM, PROTOCOL_ERROR)}
    answered = {f.stream_id for f in frames if isinstance(f, HeadersFrame)}
    assert refused and len(answered) <= 100
    assert answered | refused == set(range(1, 301, 2)) or any(isinstance(f, GoAwayFrame) for f in frames)
    client.close()
    time.sleep(0.2)
    assert len(served(nginx, "/api/many/")) == len(answered) <= 100
    still_serves(port, nginx, proxy)


MALFORMED = {
    "no-path": [(":method", "GET"), (":scheme", "http"), (":authority", "backend")],
    "unknown-pseudo": [(":method", "GET"), (":scheme", "http"), (":authority", "b"), (":path", "/api/m"),
                       (":smuggle", "1")],
    "pseudo-after-regular": [(":method", "GET"), (":scheme", "http"), ("x-a", "1"), (":path", "/api/m")],
    "twice-path": [(":method", "GET"), (":scheme", "http"), (":path", "/api/m"), (":path", "/admin")],
    "uppercase-name": [(":method", "GET"), (":scheme", "http"), (":path", "/api/m"), ("X-Upper", "1")],
    "connection": [(":method", "GET"), (":scheme", "http"), (":path", "/api/m"), ("connection", "keep-alive")],
    "transfer-encoding": [(":method", "POST"), (":scheme", "http"), (":path", "/api/m"),
                          ("transfer-encoding", "chunked")],
    "upgrade": [(":method", "GET"), (":scheme", "http"), (":path", "/api/m"), ("upgrade", "h2c")],
    "keep-alive": [(":method", "GET"), (":scheme", "http"), (":path", "/api/m"), ("keep-alive", "timeout=5")],
    "te-not-trailers": [(":method", "GET"), (":scheme", "http"), (":path", "/api/m"), ("te", "gzip")],
    "newline-in-value": [(":method", "GET"), (":scheme", "http"), (":path", "/api/m"), ("x-a", "1\r\nx-b: 2")],
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_requests_are_stream_errors(stack, case):
    """RFC 9113 §8.1.1: a malformed request is a stream error of type PROTOCOL_ERROR; the
    connection goes on (a request after it on the same connection is served)."""
    port, nginx, proxy = stack
    client = RawH2(port)
    client.send(client.headers(1, client.encoder.encode(MALFORMED[case])))
    client.send(client.headers(3, client.block("/api/next")))
    frames = client.frames(timeout=2, until=lambda f: isinstance(f, HeadersFrame) and f.stream_id == 3)
    resets = [f for f in frames if isinstance(f, RstStreamFrame) and f.stream_id == 1]
    assert resets and resets[0].error_code == PROTOCOL_ERROR, [repr(f) for f in frames]
    assert any(isinstance(f, HeadersFrame) and f.stream_id == 3 for f in frames)
    client.close()
    time.sleep(0.1)
    assert [line.split('"')[1] for line in nginx.access_lines()] == ["GET /api/next HTTP/2.0"]


def request_each(port, heads):
    """Sends each stream's header fields (in order, as given) as one request on one connection;
    the :status of each stream (None without one) and every frame read back."""
    client = RawH2(port)
    client.decoder = hpack.Decoder()
    for stream, fields in heads.items():
        client.send(client.headers(stream, client.encoder.encode(fields)))
    # Read until every stream has ended (END_STREAM or RST_STREAM), or 3 s.
    open_streams = set(heads)

    def all_ended(frame):
        if frame.stream_id in open_streams and ("END_STREAM" in frame.flags or isinstance(frame, RstStreamFrame)):
            open_streams.discard(frame.stream_id)
        return not open_streams
    frames = client.frames(timeout=3, until=all_ended)
    statuses = {stream: status_of(client, frames, stream) for stream in heads}
    client.close()
    return statuses, frames


def get_each(port, paths):
    """`request_each` with a GET of each path (raw bytes) for the authority "backend"."""
    return request_each(port, {stream: [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"backend"),
                                        (b":path", path)] for stream, path in paths.items()})


def test_paths_that_only_resemble_the_allowed_prefix_never_reach_the_server(stack):
    """"/api/.*" is decided by comparing bytes when the rest of the path is printable ASCII:
    lookalikes, a shorter path and a case change are denied, on one connection, stream by
    stream (PCRE2 decides the rest; `PCRE2Tests` checks that both agree byte for byte)."""
    port, nginx, proxy = stack
    paths = {1: b"/api/ok", 3: b"/apix", 5: b"/api", 7: b"/API/x", 9: b"/ap", 11: b"/api;x", 13: b"/ap/i/x",
             15: b"/api/ok2"}
    statuses, _ = get_each(port, paths)
    time.sleep(0.1)
    assert sorted(requested_paths(nginx)) == ["GET /api/ok HTTP/2.0", "GET /api/ok2 HTTP/2.0"], statuses
    assert statuses[1] == statuses[15] == "200"
    for stream in (3, 5, 7, 9, 11, 13):
        assert statuses[stream] == "403", (paths[stream], statuses)
    still_serves(port, nginx, proxy)


def test_paths_outside_the_target_grammar_are_answered_400_and_never_reach_the_server(stack):
    """nghttp2 lets any :path byte but controls and spaces through; Sluice holds :path to the
    grammar an HTTP/1.1 target is held to (400), so the text judged is the text forwarded: raw
    non-ASCII (judged as U+FFFD otherwise), quotes, a backslash, "*" outside OPTIONS, broken
    percent-encoding. ("*" outside OPTIONS nghttp2 resets itself: PROTOCOL_ERROR.) On one connection,
    stream by stream; valid paths around them are served."""
    port, nginx, proxy = stack
    paths = {1: b"/api/ok", 3: b"/api/\xff", 5: b"/api/\xc0\xaf..\xc0\xafadmin", 7: b'/api/"x"', 9: b"/api\\..\\admin",
             11: b"*", 13: b"/api/%zz", 15: b"/api/<x>", 17: b"/api/ok2"}
    statuses, frames = get_each(port, paths)
    time.sleep(0.1)
    assert sorted(requested_paths(nginx)) == ["GET /api/ok HTTP/2.0", "GET /api/ok2 HTTP/2.0"], statuses
    assert statuses[1] == statuses[17] == "200"
    for stream in (3, 5, 7, 9, 13, 15):
        assert statuses[stream] == "400", (paths[stream], statuses)
    resets = [f.error_code for f in frames if isinstance(f, RstStreamFrame) and f.stream_id == 11]
    assert statuses[11] is None and resets == [PROTOCOL_ERROR], statuses
    still_serves(port, nginx, proxy)


@pytest.fixture
def good_host(workdir, start_sluice):
    """nginx (h2c) behind sluice under one rule, GET /api/.* for the host good.example;
    yields (sluice port, nginx)."""
    nginx = h2c_nginx(workdir)
    try:  # (also when sluice fails to start: nginx is stopped either way)
        write_policy(workdir, nginx.port, """            http:
              - {method: GET, path: "/api/.*", host: "good\\\\.example"}
""")
        port = free_port()
        start_sluice(config(workdir, port, nginx.port))
        yield port, nginx
    finally:
        nginx.stop()


def test_a_host_rule_holds_stream_by_stream_when_the_authority_changes_on_one_connection(good_host):
    """The text of a connection's repeated :authority is reused: a stream with another
    authority, or one that only starts like the allowed one, is still judged by its own."""
    port, nginx = good_host
    authorities = {1: "good.example", 3: "evil.example", 5: "good.example", 7: "good.example.evil",
                   9: "good.exampl", 11: "good.example"}
    statuses, _ = request_each(port, {stream: [(":method", "GET"), (":scheme", "http"), (":authority", authority),
                                               (":path", f"/api/{stream}")]
                                      for stream, authority in authorities.items()})
    time.sleep(0.1)
    assert sorted(requested_paths(nginx)) == [f"GET /api/{n} HTTP/2.0" for n in (1, 11, 5)], statuses
    assert [statuses[n] for n in (3, 7, 9)] == ["403"] * 3


def test_a_host_field_that_differs_from_authority_is_answered_400_and_never_reaches_the_server(good_host):
    """RFC 9113 §8.3.1: a Host field naming another host than :authority makes the request
    malformed. Sluice judges :authority; a server that read Host would serve a host never judged.
    The same host in another letter case goes on; a second Host field nghttp2 resets itself."""
    port, nginx = good_host
    fields = {1: [(":authority", "good.example"), ("host", "evil.example")],
              3: [(":authority", "evil.example"), ("host", "good.example")],
              5: [("host", "good.example"), ("host", "evil.example")],
              7: [("host", "good.example")],
              9: [(":authority", "good.example"), ("host", "GOOD.example")]}
    heads = {}
    for stream, extra in fields.items():
        pseudo = [f for f in extra if f[0].startswith(":")]
        regular = [f for f in extra if not f[0].startswith(":")]
        heads[stream] = [(":method", "GET"), (":scheme", "http"), *pseudo, (":path", f"/api/{stream}"), *regular]
    statuses, frames = request_each(port, heads)
    time.sleep(0.2)
    assert [statuses[n] for n in (1, 3)] == ["400"] * 2, statuses
    resets = [f.error_code for f in frames if isinstance(f, RstStreamFrame) and f.stream_id == 5]
    assert statuses[5] is None and resets == [PROTOCOL_ERROR], statuses
    assert statuses[7] == "200", statuses
    # Stream 9 reached nginx (which refuses a Host beside :authority itself: a line "-" 400).
    logged = nginx.access_lines()
    assert len(logged) == 2 and "GET /api/7 HTTP/2.0" in requested_paths(nginx), logged
    assert not any(f"/api/{n} " in line for n in (1, 3, 5) for line in logged)


ECHO_TAG = 'location /echo/ { return 200 "$http_x_tag $request_uri\\n"; }'


def test_heads_of_every_size_on_many_connections_each_reach_the_server_as_sent(workdir, start_sluice):
    """Sluice keeps the storage of forwarded heads and body buffers per thread and hands it to
    the next streams, of any connection (HTTP2Recycler). Four connections of 60 streams each,
    sent in one burst, with tags from 1 to 2,000 bytes (around the 512 bytes of storage that is
    kept), a rule on a header, and some streams reset as soon as they are sent: every allowed
    stream's response echoes its own tag and path (what nginx received); no denied stream
    reached nginx; nothing of one head shows up in another."""
    nginx = Nginx(workdir, free_port(), ECHO_TAG, listen_options="http2")
    try:
        write_policy(workdir, nginx.port, """            http:
              - {method: GET, path: "/echo/.*", headers: ["X-Allowed: yes"]}
""")
        port = free_port()
        start_sluice(config(workdir, port, nginx.port))
        sizes = [1, 3, 7, 8, 16, 17, 100, 400, 480, 600, 1500, 2000]
        clients, plans = [], []
        for connection in range(4):
            client = RawH2(port)
            client.decoder = hpack.Decoder()
            plan = {}
            for index in range(60):
                stream = 2 * index + 1
                tag = "".join(chr(97 + (connection * 7 + index * 3 + n) % 26) for n in range(sizes[index % len(sizes)]))
                plan[stream] = (f"/echo/{connection}-{stream}", tag, index % 3 != 0, index % 7 == 3)
            burst = b""
            for stream, (path, tag, allowed, reset) in plan.items():
                extra = [("x-tag", tag)] + ([("x-allowed", "yes")] if allowed else [])
                burst += client.headers(stream, client.block(path, extra=extra))
                if reset:
                    burst += RstStreamFrame(stream, error_code=CANCEL).serialize()
            clients.append(client)
            plans.append(plan)
            client.send(burst)
        for client, plan in zip(clients, plans):
            waiting = {stream for stream, (_, _, _, reset) in plan.items() if not reset}

            def ended(frame, waiting=waiting):
                if frame.stream_id in waiting and ("END_STREAM" in frame.flags or isinstance(frame, RstStreamFrame)):
                    waiting.discard(frame.stream_id)
                return not waiting
            frames = client.frames(timeout=5, until=ended)
            assert not waiting, f"streams without an end: {sorted(waiting)}"
            bodies, statuses = {}, {}
            for frame in frames:  # every HEADERS frame decoded once, in order (HPACK keeps state)
                if isinstance(frame, DataFrame):
                    bodies[frame.stream_id] = bodies.get(frame.stream_id, b"") + frame.data
                elif isinstance(frame, HeadersFrame):
                    statuses.setdefault(frame.stream_id, dict(client.decoder.decode(frame.data)).get(":status"))
            for stream, (path, tag, allowed, reset) in plan.items():
                if reset:
                    continue
                status = statuses.get(stream)
                if allowed:
                    assert (status, bodies.get(stream)) == ("200", f"{tag} {path}\n".encode()), (path, len(tag))
                else:
                    assert status == "403", (path, status)
            client.close()
        time.sleep(0.2)
        reached = set(requested_paths(nginx))
        for plan in plans:
            for path, _, allowed, reset in plan.values():
                if not allowed:
                    assert f"GET {path} HTTP/2.0" not in reached, path
                elif not reset:
                    assert f"GET {path} HTTP/2.0" in reached, path
    finally:
        nginx.stop()
