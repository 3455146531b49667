"""Differential test of Sluice's HTTP/1.1 request parser against h11, httptools and llhttp.

Starts the real `sluice` binary (SLUICE_BIN) as `sluice debug http1-parse`, which prints the
message boundaries its parser sees, and feeds the same bytes to the three Python parsers
installed in the test venv. The corpus is generated from a fixed seed and is built around the
inputs on which HTTP/1.1 implementations are known to disagree (the request-smuggling
catalogue of RFC 9112 §11.2): Content-Length with Transfer-Encoding, bare LF, obs-fold,
duplicate Content-Length, whitespace before the colon, chunk-size overflow, transfer codings
other than a final chunked, and more, alone and combined with valid pipelined requests.

The property: for every input, Sluice either rejects it or agrees with the strict parsers on
message boundaries. Concretely:
- every message Sluice accepted (and so would forward) is framed the same way (method,
  target, decoded body) by each peer that got that far without an error: a peer that frames
  a forwarded message differently is the back end of a smuggling attack;
- when Sluice accepts an input whole, at least one strict peer (h11 or llhttp) accepts it
  whole with the same messages, so Sluice is never laxer than every strict parser;
- Sluice's answer does not depend on how the input is split (whole, 1 byte, 7 bytes).
"""
import json
import random
import subprocess

import h11
import httptools
import llhttp
import pytest

from conftest import SLUICE

SEED = 0x5_1_0_C_E
CASES_PER_FAMILY = 12


# --- The parsers -------------------------------------------------------------------------

class Outcome:
    """What one parser made of an input: complete messages, and how it stopped."""

    def __init__(self, messages, rejected, switched=False):
        self.messages = messages  # list of (method, target, body) as bytes
        self.rejected = rejected
        self.switched = switched  # stopped at an upgrade or CONNECT, the rest is opaque

    def __repr__(self):
        state = "rejected" if self.rejected else ("switched" if self.switched else "ok")
        return f"<{state} {self.messages!r}>"


def sluice(data, split=0):
    completed = subprocess.run([SLUICE, "debug", "http1-parse", "--split", str(split)],
                               input=data, capture_output=True, timeout=30)
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    report = json.loads(completed.stdout)
    messages = [(m["method"].encode("latin-1"), m["target"].encode("latin-1"), m["body"].encode("latin-1"))
                for m in report["messages"]]
    stop = report["stop"]
    return Outcome(messages, stop["kind"] == "error", stop["kind"] == "protocolSwitchPending"), report


def h11_parse(data):
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(data)
    messages, current = [], None
    try:
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                return Outcome(messages, False)
            if event is h11.PAUSED:
                # A pending protocol switch (Upgrade or CONNECT): the rest is not HTTP.
                return Outcome(messages, False, switched=True)
            if isinstance(event, h11.Request):
                current = [event.method, event.target, b""]
            elif isinstance(event, h11.Data):
                current[2] += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                messages.append(tuple(current))
                if connection.their_state is h11.MUST_CLOSE:
                    return Outcome(messages, False)
                if connection.client_is_waiting_for_100_continue or connection.their_state is not h11.DONE:
                    return Outcome(messages, False)
                if connection.our_state is h11.SEND_RESPONSE:
                    connection.send(h11.Response(status_code=200, headers=[("Content-Length", "0")]))
                    connection.send(h11.EndOfMessage())
                if connection.our_state is h11.MUST_CLOSE or connection.their_state is h11.MUST_CLOSE:
                    return Outcome(messages, False)
                connection.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return Outcome(messages, False)
    except h11.RemoteProtocolError:
        return Outcome(messages, True)
    except h11.LocalProtocolError:
        # Our canned response cannot be sent in this state: stop where we are.
        return Outcome(messages, False)


class _Callbacks:
    def __init__(self):
        self.messages, self.url, self.body = [], b"", b""

    def on_message_begin(self):
        self.url, self.body = b"", b""

    def on_url(self, url):
        self.url += bytes(url)

    def on_body(self, body):
        self.body += bytes(body)


def httptools_parse(data):
    callbacks = _Callbacks()
    parser = httptools.HttpRequestParser(callbacks)

    def complete():
        callbacks.messages.append((parser.get_method(), callbacks.url, callbacks.body))

    callbacks.on_message_complete = complete
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        return Outcome(callbacks.messages, False, switched=True)
    except httptools.HttpParserError:
        return Outcome(callbacks.messages, True)
    return Outcome(callbacks.messages, False)


class _LLHTTPRequest(llhttp.Request):
    def __init__(self):
        super().__init__()
        self.messages, self.method_bytes, self.url, self.body = [], b"", b"", b""

    def on_message_begin(self):
        self.method_bytes, self.url, self.body = b"", b"", b""

    def on_method(self, method):
        self.method_bytes += bytes(method)

    def on_url(self, url):
        self.url += bytes(url)

    def on_body(self, body):
        self.body += bytes(body)

    def on_message_complete(self):
        self.messages.append((self.method_bytes, self.url, self.body))


def llhttp_parse(data):
    parser = _LLHTTPRequest()
    try:
        parser.execute(data)
    except llhttp.Error:
        return Outcome(parser.messages, True)
    return Outcome(parser.messages, False, switched=parser.is_upgrading)


PEERS = {"h11": h11_parse, "httptools": httptools_parse, "llhttp": llhttp_parse}
STRICT_PEERS = ("h11", "llhttp")


# --- The corpus --------------------------------------------------------------------------

def request(method=b"GET", target=b"/", version=b"HTTP/1.1", headers=((b"Host", b"example.com"),), body=b"",
            line_end=b"\r\n"):
    head = method + b" " + target + b" " + version + line_end
    for name, value in headers:
        head += name + b": " + value + line_end
    return head + line_end + body


def chunked(*pieces, trailers=b""):
    out = b""
    for piece in pieces:
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return out + b"0\r\n" + trailers + b"\r\n"


HOST = (b"Host", b"example.com")


def valid_requests(rng):
    """Well-formed requests every parser should frame the same way."""
    body = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(0, 40)))
    return [
        request(),
        request(target=b"/api/v1/items?id=%d&q=a%%20b" % rng.randint(0, 999)),
        request(method=b"POST", headers=(HOST, (b"Content-Length", b"%d" % len(body))), body=body),
        request(method=b"PUT", headers=(HOST, (b"Transfer-Encoding", b"chunked")),
                body=chunked(body[:7], body[7:], b"tail")),
        request(method=b"POST", headers=(HOST, (b"Transfer-Encoding", b"chunked")),
                body=chunked(b"x" * rng.randint(1, 300), trailers=b"X-Checksum: 1\r\n")),
        request(method=b"HEAD", target=b"/index.html"),
        request(method=b"DELETE", target=b"/items/%d" % rng.randint(0, 99)),
        request(method=b"OPTIONS", target=b"*"),
        request(version=b"HTTP/1.0", headers=()),
        request(headers=(HOST, (b"Accept", b"*/*"), (b"X-Empty", b""), (b"User-Agent", b"curl/8.0"))),
        request(method=b"POST", headers=(HOST, (b"Content-Length", b"0"))),
        request(target=b"http://example.com/absolute?x=1"),
    ]


def smuggling_requests(rng):
    """The inputs on which implementations disagree. Each is followed by a plain GET, so a
    parser that frames the first message differently shows it in the second."""
    n = rng.randint(1, 9)
    payload = b"x" * n
    follow = request(target=b"/smuggled")
    te, cl = (b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"%d" % (len(chunked(payload))))
    cases = [
        # Content-Length together with Transfer-Encoding, both orders.
        request(method=b"POST", headers=(HOST, cl, te), body=chunked(payload)) + follow,
        request(method=b"POST", headers=(HOST, te, (b"Content-Length", b"3")), body=chunked(payload)) + follow,
        # Duplicate and conflicting Content-Length, lists, signs, hex, spaces.
        request(method=b"POST", headers=(HOST, (b"Content-Length", b"%d" % n), (b"Content-Length", b"%d" % n)), body=payload) + follow,
        request(method=b"POST", headers=(HOST, (b"Content-Length", b"%d" % n), (b"Content-Length", b"%d" % (n + 1))), body=payload + b"y") + follow,
        request(method=b"POST", headers=(HOST, (b"Content-Length", b"%d, %d" % (n, n))), body=payload) + follow,
        request(method=b"POST", headers=(HOST, (b"Content-Length", b"+%d" % n)), body=payload) + follow,
        request(method=b"POST", headers=(HOST, (b"Content-Length", b"0x%x" % n)), body=payload) + follow,
        request(method=b"POST", headers=(HOST, (b"Content-Length", b"%d %d" % (n, n))), body=payload) + follow,
        request(method=b"POST", headers=(HOST, (b"Content-Length", b"1" + b"0" * 25)), body=payload) + follow,
        request(method=b"POST", headers=(HOST, (b"Content-Length", b"0" * 20 + b"%d" % n)), body=payload) + follow,
        # Transfer-Encoding other than a final chunked.
        request(method=b"POST", headers=(HOST, (b"Transfer-Encoding", b"gzip")), body=chunked(payload)) + follow,
        request(method=b"POST", headers=(HOST, (b"Transfer-Encoding", b"chunked, gzip")), body=chunked(payload)) + follow,
        request(method=b"POST", headers=(HOST, (b"Transfer-Encoding", b"identity")), body=chunked(payload)) + follow,
        request(method=b"POST", headers=(HOST, (b"Transfer-Encoding", b"chunked, chunked")), body=chunked(payload)) + follow,
        request(method=b"POST", headers=(HOST, te, te), body=chunked(payload)) + follow,
        request(method=b"POST", headers=(HOST, (b"Transfer-Encoding", b"xchunked")), body=chunked(payload)) + follow,
        request(method=b"POST", headers=(HOST, (b"Transfer-Encoding", b"chunked\x0b")), body=chunked(payload)) + follow,
        request(method=b"POST", headers=(HOST, (b"Transfer-Encoding", b"CHUNKED")), body=chunked(payload)) + follow,
        request(method=b"POST", headers=(HOST, (b"Transfer-Encoding", b"gzip, chunked")), body=chunked(payload)) + follow,
        request(method=b"POST", headers=(HOST, (b"Transfer-Encoding", b",chunked")), body=chunked(payload)) + follow,
        request(method=b"POST", version=b"HTTP/1.0", headers=(te,), body=chunked(payload)) + follow,
        # Whitespace before the colon.
        request(method=b"POST", headers=(HOST, (b"Transfer-Encoding ", b"chunked")), body=chunked(payload)) + follow,
        request(method=b"POST", headers=(HOST, (b"Content-Length\t", b"%d" % n)), body=payload) + follow,
        request(headers=((b"Host ", b"example.com"),)) + follow,
        # obs-fold.
        request(method=b"POST", headers=(HOST, (b"Transfer-Encoding", b"\r\n chunked")), body=chunked(payload)) + follow,
        request(headers=(HOST, (b"X-Folded", b"one\r\n\ttwo"))) + follow,
        request(method=b"POST", headers=(HOST, (b"X-A", b"b\r\n Content-Length: %d" % n)), body=payload) + follow,
        # Bare LF and bare CR.
        request(line_end=b"\n") + follow,
        request(method=b"POST", headers=(HOST, te), body=chunked(payload).replace(b"\r\n", b"\n", 1)) + follow,
        request(method=b"POST", headers=(HOST, te), body=b"%x\r\n" % n + payload + b"\n0\r\n\r\n") + follow,
        b"GET / HTTP/1.1\r\nHost: example.com\nX-A: b\r\n\r\n" + follow,
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\n" + follow,
        b"GET / HTTP/1.1\r\nHost: example.com\r\nX-A: b\rc\r\n\r\n" + follow,
        # Chunk sizes: overflow, signs, prefixes, whitespace, extensions.
        request(method=b"POST", headers=(HOST, te), body=b"FFFFFFFFFFFFFFFFF%x\r\n" % n + payload + b"\r\n0\r\n\r\n") + follow,
        request(method=b"POST", headers=(HOST, te), body=b"1%s\r\n" % (b"0" * 16) + payload + b"\r\n0\r\n\r\n") + follow,
        request(method=b"POST", headers=(HOST, te), body=b"0" * 20 + b"%x\r\n" % n + payload + b"\r\n0\r\n\r\n") + follow,
        request(method=b"POST", headers=(HOST, te), body=b"-%x\r\n" % n + payload + b"\r\n0\r\n\r\n") + follow,
        request(method=b"POST", headers=(HOST, te), body=b"0x%x\r\n" % n + payload + b"\r\n0\r\n\r\n") + follow,
        request(method=b"POST", headers=(HOST, te), body=b"%x \r\n" % n + payload + b"\r\n0\r\n\r\n") + follow,
        request(method=b"POST", headers=(HOST, te), body=b" %x\r\n" % n + payload + b"\r\n0\r\n\r\n") + follow,
        request(method=b"POST", headers=(HOST, te), body=b"%x;ext=1\r\n" % n + payload + b"\r\n0\r\n\r\n") + follow,
        request(method=b"POST", headers=(HOST, te), body=b"%x;ext=\"q\"\r\n" % n + payload + b"\r\n0\r\n\r\n") + follow,
        request(method=b"POST", headers=(HOST, te), body=b"%x ; ext\r\n" % n + payload + b"\r\n0\r\n\r\n") + follow,
        request(method=b"POST", headers=(HOST, te), body=b"%x\r\n" % (n + 1) + payload + b"\r\n0\r\n\r\n") + follow,
        request(method=b"POST", headers=(HOST, te), body=b"%x\r\n" % n + payload + b"0\r\n\r\n") + follow,
        request(method=b"POST", headers=(HOST, te), body=chunked(payload, trailers=b"Content-Length: 5\r\n")) + follow,
        request(method=b"POST", headers=(HOST, te), body=chunked(payload, trailers=b"X: a\r\n b\r\n")) + follow,
        # Request lines.
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n" + follow,
        b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n" + follow,
        b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n" + follow,
        b"GET / http/1.1\r\nHost: a\r\n\r\n" + follow,
        b"GET / HTTP/1.2\r\nHost: a\r\n\r\n" + follow,
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n" + follow,
        b"GET /\r\n\r\n" + follow,
        b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n" + follow,
        b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n" + follow,
        b"GET /caf\xe9 HTTP/1.1\r\nHost: a\r\n\r\n" + follow,
        b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n" + follow,
        b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n" + follow,
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n" + follow,
        b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n" + follow,
        # Field names and values.
        b"GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n" + follow,
        b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n" + follow,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n" + follow,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7f\r\n\r\n" + follow,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-A: caf\xe9\r\n\r\n" + follow,
        b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n" + follow,
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" + follow,
        b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n" + follow,
        # Connection handling.
        request(headers=(HOST, (b"Connection", b"close"))) + follow,
        request(version=b"HTTP/1.0", headers=()) + follow,
        request(headers=(HOST, (b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"))) + b"\x81\x02hi",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n\x16\x03\x01",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nContent-Length: %d\r\n\r\n" % n + payload + follow,
        request(method=b"POST", headers=(HOST, (b"Expect", b"100-continue"), (b"Content-Length", b"%d" % n)), body=payload) + follow,
    ]
    return cases


def generated_corpus():
    rng = random.Random(SEED)
    corpus = []
    for _ in range(CASES_PER_FAMILY):
        valid = valid_requests(rng)
        smuggling = smuggling_requests(rng)
        corpus += valid
        corpus += smuggling
        # Pipelines: valid messages around one disputed message.
        for _ in range(4):
            pipeline = rng.sample(valid, rng.randint(1, 3))
            pipeline.insert(rng.randint(0, len(pipeline)), rng.choice(smuggling))
            corpus.append(b"".join(pipeline))
        # A random single-byte mutation of a valid pipeline.
        base = bytearray(b"".join(rng.sample(valid, 3)))
        position = rng.randrange(len(base))
        base[position] = rng.choice(b" \t\r\n:;,\x00\x7f0aF-")
        corpus.append(bytes(base))
    # Deduplicate, keeping the generated order.
    return list(dict.fromkeys(corpus))


CORPUS = generated_corpus()


def case_id(data):
    text = data[:60].decode("latin-1").encode("unicode_escape").decode()
    return text


# --- The property ------------------------------------------------------------------------

def test_corpus_exercises_disagreements():
    """The corpus is only useful where the peers disagree; make sure it has such cases."""
    disagreements = 0
    for data in CORPUS:
        outcomes = {name: parse(data) for name, parse in PEERS.items()}
        signatures = {(o.rejected, tuple(o.messages)) for o in outcomes.values()}
        disagreements += len(signatures) > 1
    assert disagreements >= 20, f"only {disagreements} inputs where the peers disagree"


@pytest.mark.parametrize("data", CORPUS, ids=case_id)
def test_sluice_rejects_or_agrees(data):
    ours, report = sluice(data)
    peers = {name: parse(data) for name, parse in PEERS.items()}

    # Every message Sluice accepted (and would forward) is framed the same way by every peer
    # that got that far without rejecting.
    for name, theirs in peers.items():
        shared = min(len(ours.messages), len(theirs.messages))
        assert ours.messages[:shared] == theirs.messages[:shared], (
            f"{name} frames a message Sluice accepts differently\n sluice: {ours}\n {name}: {theirs}")

    if not ours.rejected:
        agreeing = [name for name in STRICT_PEERS
                    if not peers[name].rejected and peers[name].messages == ours.messages]
        assert agreeing, f"Sluice accepts what no strict parser frames the same way\n sluice: {ours}\n peers: {peers}"

    # The answer does not depend on how the bytes arrive.
    for split in (1, 7):
        _, split_report = sluice(data, split)
        assert split_report == report, f"split {split} changes the answer"


def test_known_smuggling_inputs_are_rejected_with_400():
    """A few classic attacks, checked by name, with the status Sluice answers."""
    attacks = {
        "CL.TE": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        "TE.CL": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
        "TE.TE obfuscated": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-encoding: x\r\n\r\n0\r\n\r\n",
        "CL.CL": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "space before colon": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        "obs-fold TE": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        "bare LF": b"GET / HTTP/1.1\nHost: a\n\n",
        "chunk overflow": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFF1\r\nx\r\n0\r\n\r\n",
    }
    for name, data in attacks.items():
        ours, report = sluice(data)
        assert ours.rejected, f"{name} accepted: {report}"
        assert report["stop"]["status"] in (400, 501), f"{name}: {report['stop']}"
        assert ours.messages == [], f"{name}: nothing of it may be forwarded"


def test_limits_answer_414_and_431():
    long_target = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    _, report = sluice(long_target)
    assert report["stop"]["status"] == 414
    many_fields = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(200)) + b"\r\n"
    _, report = sluice(many_fields)
    assert report["stop"]["status"] == 431


# --- Responses ---------------------------------------------------------------------------
#
# The response side decides where each response ends, and so which response the client gets
# for which request. The same property, against the two strict parsers (h11 as a client, and
# llhttp's response parser; llhttp's Python binding cannot be told a request was HEAD, so it
# sits out the cases with one).

def sluice_responses(data, methods, split=0):
    completed = subprocess.run([SLUICE, "debug", "http1-parse", "--response", "--requests", ",".join(methods),
                                "--split", str(split)], input=data, capture_output=True, timeout=30)
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    report = json.loads(completed.stdout)
    messages = [(m["status"], m["body"].encode("latin-1")) for m in report["messages"] if not m["informational"]]
    return Outcome(messages, report["stop"]["kind"] == "error"), report


def h11_responses(data, methods):
    connection = h11.Connection(h11.CLIENT)
    messages, pending, current = [], list(methods), None

    def send_next():
        method = pending.pop(0)
        connection.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
        connection.send(h11.EndOfMessage())

    try:
        send_next()
        connection.receive_data(data)
        connection.receive_data(b"")
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                return Outcome(messages, False)
            if isinstance(event, h11.Response):
                current = [event.status_code, b""]
            elif isinstance(event, h11.Data):
                current[1] += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                messages.append(tuple(current))
                if not pending or connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                    return Outcome(messages, False)
                connection.start_next_cycle()
                send_next()
    except h11.RemoteProtocolError:
        return Outcome(messages, True)
    except h11.LocalProtocolError:
        return Outcome(messages, False)


class _LLHTTPResponse(llhttp.Response):
    def __init__(self):
        super().__init__()
        self.messages, self.body = [], b""

    def on_message_begin(self):
        self.body = b""

    def on_body(self, body):
        self.body += bytes(body)

    def on_message_complete(self):
        if self.status >= 200:
            self.messages.append((self.status, self.body))


def llhttp_responses(data, methods):
    if "HEAD" in methods or "CONNECT" in methods:
        return None
    parser = _LLHTTPResponse()
    try:
        parser.execute(data)
        parser.finish()
    except llhttp.Error:
        return Outcome(parser.messages, True)
    return Outcome(parser.messages, False)


def response(status=b"200 OK", headers=(), body=b"", version=b"HTTP/1.1", line_end=b"\r\n"):
    head = version + b" " + status + line_end
    for name, value in headers:
        head += name + b": " + value + line_end
    return head + line_end + body


def response_corpus():
    rng = random.Random(SEED + 1)
    cases = []
    for _ in range(4):
        body = bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(1, 30)))
        n = len(body)
        cl = (b"Content-Length", b"%d" % n)
        te = (b"Transfer-Encoding", b"chunked")
        ok = response(headers=(cl,), body=body)
        cases += [
            (["GET"], ok),
            (["GET", "GET"], ok + response(headers=(te,), body=chunked(body[:3], body[3:]))),
            (["HEAD", "GET"], response(headers=(cl,)) + ok),
            (["GET", "GET"], response(status=b"204 No Content") + ok),
            (["GET", "GET"], response(status=b"304 Not Modified", headers=(cl,)) + ok),
            (["GET"], response(status=b"100 Continue") + ok),
            (["GET"], response(status=b"200") + b""),
            (["GET"], b"HTTP/1.1 200 \r\nContent-Length: %d\r\n\r\n" % n + body),
            (["GET"], response(body=body)),
            (["GET"], response(headers=((b"Transfer-Encoding", b"gzip"),), body=body)),
            (["GET", "GET"], response(headers=(cl, te), body=chunked(body)) + ok),
            (["GET", "GET"], response(headers=(cl, cl), body=body) + ok),
            (["GET", "GET"], response(headers=(cl, (b"Content-Length", b"%d" % (n + 1))), body=body + b"x") + ok),
            (["GET", "GET"], response(headers=((b"Content-Length", b"%d, %d" % (n, n)),), body=body) + ok),
            (["GET", "GET"], response(line_end=b"\n", headers=(cl,), body=body) + ok),
            (["GET", "GET"], response(headers=((b"X-A", b"b\r\n c"), cl), body=body) + ok),
            (["GET", "GET"], response(headers=((b"Content-Length ", b"%d" % n),), body=body) + ok),
            (["GET", "GET"], response(headers=(te,), body=b"FFFFFFFFFFFFFFFFF1\r\n" + body + b"\r\n0\r\n\r\n") + ok),
            (["GET", "GET"], response(headers=(te,), body=b"%x \r\n" % n + body + b"\r\n0\r\n\r\n") + ok),
            (["GET", "GET"], response(version=b"HTTP/1.0", headers=(te,), body=chunked(body)) + ok),
            (["GET"], response(status=b"2000 OK", headers=(cl,), body=body)),
            (["GET"], response(status=b"099 Odd", headers=(cl,), body=body)),
            (["GET"], b"HTTP/1.1  200 OK\r\nContent-Length: %d\r\n\r\n" % n + body),
            (["GET", "GET"], response(headers=(cl, (b"Connection", b"close")), body=body) + ok),
        ]
    return list({(tuple(m), d): None for m, d in cases})


RESPONSE_CORPUS = response_corpus()


@pytest.mark.parametrize("methods,data", RESPONSE_CORPUS, ids=lambda v: case_id(v) if isinstance(v, bytes) else ",".join(v))
def test_sluice_responses_reject_or_agree(methods, data):
    ours, report = sluice_responses(data, methods)
    peers = {"h11": h11_responses(data, methods), "llhttp": llhttp_responses(data, methods)}
    peers = {name: outcome for name, outcome in peers.items() if outcome is not None}
    for name, theirs in peers.items():
        shared = min(len(ours.messages), len(theirs.messages))
        assert ours.messages[:shared] == theirs.messages[:shared], (
            f"{name} frames a response Sluice accepts differently\n sluice: {ours}\n {name}: {theirs}")
    if not ours.rejected:
        agreeing = [name for name, theirs in peers.items() if not theirs.rejected and theirs.messages == ours.messages]
        assert agreeing, f"Sluice accepts a response no strict parser frames the same way\n sluice: {ours}\n peers: {peers}"
    _, split_report = sluice_responses(data, methods, split=1)
    assert split_report == report, "byte-by-byte feeding changes the answer"
