"""End-to-end: the HTTP/1.1 policy cases that have an HTTP/2 meaning, over HTTP/2 (issue 13:
"every HTTP/1.1 test case that has an HTTP/2 meaning passes over HTTP/2 too"). Their HTTP/1.1
twins are in test_hostile.py and test_http_explicit.py: dot segments cannot walk out of an
allowed prefix, the server receives the normalised path, escaped slashes are redirected,
normalisation can be turned off, a repeated header cannot satisfy a rule with one copy, a
policy change applies to the next request on an open connection, header actions rewrite what
the server receives. Requests are written with Python's `hpack`/`hyperframe` (paths exactly as
given); what reached the server is read from nginx's access log. No root.
Starts: the sluice binary, nginx with an h2c listener, Python raw HTTP/2 clients, curl."""
import subprocess
import time

import hpack
import pytest
from hyperframe.frame import DataFrame, HeadersFrame

from conftest import free_port
from test_hostile import change_policy, config, follow_policy_changes, write_policy
from test_http2 import RULES, h2c_nginx
from test_http2_hostile import RawH2


@pytest.fixture
def h2(workdir, start_sluice):
    """Yields start(extra=""): nginx (h2c) behind a sluice under RULES, returning (port, nginx),
    or (port, nginx, sluice) with `with_proxy`."""
    servers = []

    def start(extra="", rules=RULES, with_proxy=False):
        nginx = h2c_nginx(workdir)
        servers.append(nginx)
        write_policy(workdir, nginx.port, rules)
        listen = free_port()
        proxy = start_sluice(config(workdir, listen, nginx.port, extra=extra))
        return (listen, nginx, proxy) if with_proxy else (listen, nginx)
    yield start
    for nginx in servers:
        nginx.stop()


def exchange(client, stream, path, method="GET", extra=(), body=None):
    """Sends one request on `client`; returns (status, headers dict) of its response head."""
    block = client.encoder.encode([(":method", method), (":scheme", "http"), (":authority", "backend"),
                                   (":path", path), *extra])
    client.send(client.headers(stream, block, end_stream=body is None))
    if body is not None:
        client.send(DataFrame(stream, data=body, flags=["END_STREAM"]).serialize())
    frames = client.frames(timeout=5, until=lambda f: isinstance(f, HeadersFrame) and f.stream_id == stream)
    heads = [f for f in frames if isinstance(f, HeadersFrame) and f.stream_id == stream]
    assert heads, [repr(f) for f in frames]
    headers = dict((name.decode() if isinstance(name, bytes) else name, value.decode() if isinstance(value, bytes) else value)
                   for name, value in client.decoder.decode(heads[0].data))
    return int(headers[":status"]), headers


def request(port, path, **kwargs):
    client = RawH2(port)
    client.decoder = hpack.Decoder()
    try:
        return exchange(client, 1, path, **kwargs)
    finally:
        client.close()


def served(nginx):
    time.sleep(0.1)  # nginx writes its access log line after the response
    return [line.split('"')[1] for line in nginx.access_lines()]


BYPASSES = ["/api/../admin", "/api/%2e%2e/admin", "/api/%2E%2E/admin", "/api/./../admin", "/api/x/../../admin",
            "/api/..", "/api/%2e%2e"]


@pytest.mark.parametrize("target", BYPASSES)
def test_dot_segments_cannot_walk_out_of_an_allowed_prefix(h2, target):
    port, nginx = h2()
    assert request(port, target)[0] == 403
    assert served(nginx) == [], "nothing of a denied request may reach the server"


def test_the_server_receives_the_normalised_path_that_was_judged(h2):
    port, nginx = h2()
    assert request(port, "/api//x/./y/../%7Ez?q=/../a")[0] == 200
    assert served(nginx) == ["GET /api/x/~z?q=/../a HTTP/2.0"]


def test_escaped_slashes_are_redirected_to_the_unescaped_path(h2):
    port, nginx = h2()
    status, headers = request(port, "/api/..%2fadmin")
    assert (status, headers.get("location")) == (307, "/admin")
    status, headers = request(port, "/api/a%2Fb")
    assert (status, headers.get("location")) == (307, "/api/a/b")
    assert served(nginx) == []


def test_normalisation_can_be_turned_off(h2):
    port, nginx = h2(extra="http: {normalizePaths: false}")
    assert request(port, "/api/../admin")[0] == 200
    assert served(nginx) == ["GET /api/../admin HTTP/2.0"]


def test_a_repeated_header_cannot_satisfy_a_rule_with_one_copy(h2):
    port, nginx = h2()
    status, _ = request(port, "/api/orders", method="POST", extra=[("x-token", "wrong"), ("x-token", "s3cret")], body=b"x")
    assert status == 403
    assert request(port, "/api/orders", method="POST", extra=[("x-token", "s3cret")], body=b"x")[0] == 200
    assert served(nginx) == ["POST /api/orders HTTP/2.0"]


def test_a_policy_change_applies_to_the_next_stream_on_an_open_connection(h2, workdir):
    port, nginx, proxy = h2(with_proxy=True)
    client = RawH2(port)
    client.decoder = hpack.Decoder()
    try:
        assert exchange(client, 1, "/api/a")[0] == 200
        change_policy(proxy, workdir, nginx.port, """            http:
              - {method: GET, path: "/other/.*"}
""")
        assert exchange(client, 3, "/api/a")[0] == 403
    finally:
        client.close()
    assert served(nginx) == ["GET /api/a HTTP/2.0"]


PATH_ONLY = """            http:
              - {method: GET, path: "/api/.*"}
"""


def test_a_repeated_stream_is_judged_anew_after_each_policy_change(h2, workdir):
    """While no rule reads a header (RULES has one), a connection keeps the judgements of its
    recent requests: the very same request on the same connection must follow every policy
    change (the allow removed, given back, narrowed by a header rule), and nothing denied
    reaches the server (the HTTP/1.1 twin: test_a_repeated_request_is_judged_anew_after_each_policy_change)."""
    port, nginx, proxy = h2(rules=PATH_ONLY, with_proxy=True)
    client = RawH2(port)
    client.decoder = hpack.Decoder()
    streams = iter(range(1, 99, 2))

    def status(extra=()):
        return exchange(client, next(streams), "/api/a", extra=extra)[0]

    try:
        follow_policy_changes(status, lambda rules: change_policy(proxy, workdir, nginx.port, rules),
                              PATH_ONLY, "/api/.*", [("x-token", "secret")])
    finally:
        client.close()
    assert served(nginx) == ["GET /api/a HTTP/2.0"] * 6, "3 + 2 + 1 allowed, no denied one"


def test_header_actions_rewrite_what_the_server_receives(h2):
    """headerMatches with mismatch: REPLACE: whatever the client sent, the server gets the
    rule's value (the HTTP/1.1 twin: test_header_match_replace_rewrites_the_request)."""
    port, nginx = h2(rules="""            http:
              - method: GET
                path: "/team"
                headerMatches:
                  - {name: X-Team, value: shop, mismatch: REPLACE}
""")
    for sent in (["-H", "X-Team: intruder"], [], ["-H", "X-Team: shop"]):
        result = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--max-time", "5", *sent,
                                 f"http://127.0.0.1:{port}/team"], capture_output=True, text=True)
        assert result.stdout == "team=shop\n", (sent, result.stdout, result.stderr)


def test_a_header_rule_added_on_an_open_connection_reads_the_next_streams_headers(h2, workdir):
    """Header fields are collected only when a rule can read them: a policy change that adds
    one while the connection is open must judge the next stream by its headers."""
    port, nginx, proxy = h2(with_proxy=True)
    client = RawH2(port)
    client.decoder = hpack.Decoder()
    try:
        assert exchange(client, 1, "/api/a")[0] == 200
        change_policy(proxy, workdir, nginx.port, """            http:
              - {method: GET, path: "/api/.*", headers: ["X-Token: s3cret"]}
""")
        assert exchange(client, 3, "/api/b")[0] == 403
        assert exchange(client, 5, "/api/c", extra=[("x-token", "s3cret")])[0] == 200
    finally:
        client.close()
    assert served(nginx) == ["GET /api/a HTTP/2.0", "GET /api/c HTTP/2.0"]
