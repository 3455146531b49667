"""End-to-end: transparent TCP and UDP listeners in the namespace lab, with nftables
TPROXY diverting an endpoint's traffic to sluice in the node namespace (root).
Starts: scripts/lab namespaces, nftables, the sluice binary, nginx, curl, a Python UDP peer."""
import socket
import subprocess
import textwrap
import time


from conftest import access_log_lines
from lab import lab  # noqa: F401  (fixture)

SERVER = "10.200.2.2"   # endpoint ep2
CLIENT = "10.200.1.2"   # endpoint ep1
NODE_TO_SERVER = "10.200.2.1"

UDP_ECHO = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], int(sys.argv[2])))
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(b"echo:" + data + b" from-peer:" + peer[0].encode(), peer)
""")

TRANSPARENT_CONFIG = """
workers: 2
proxyMark: 0xa00
listeners:
  - {name: tcp-redirect, mode: transparent, listen: 127.0.0.1:15001}
  - {name: udp-redirect, mode: transparent, protocol: udp, listen: 127.0.0.1:15053}
timeouts: {udpIdle: 1s, drain: 2s}
flowLog: {sink: file, path: "@FLOWS@"}
"""


def divert(lab):
    lab.nft(f"""
table ip sluice_e2e {{
  chain prerouting {{
    type filter hook prerouting priority mangle; policy accept;
    iifname "ep1" ip daddr {SERVER} tcp dport 8080 tproxy to 127.0.0.1:15001 meta mark set 0x200 accept
    iifname "ep1" ip daddr {SERVER} udp dport 5353 tproxy to 127.0.0.1:15053 meta mark set 0x200 accept
  }}
}}
""")


def test_transparent_tcp_reaches_the_original_destination(lab, workdir, start_sluice):
    nginx_dir = workdir / "srv"
    nginx_dir.mkdir()
    # nginx in the server endpoint, logging the client address it saw.
    conf = nginx_dir / "nginx.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; error_log {nginx_dir}/error.log; pid {nginx_dir}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  log_format peer '$remote_addr $request';
  access_log {nginx_dir}/access.log peer;
  client_body_temp_path {nginx_dir}/b; proxy_temp_path {nginx_dir}/p; fastcgi_temp_path {nginx_dir}/f;
  uwsgi_temp_path {nginx_dir}/u; scgi_temp_path {nginx_dir}/s;
  server {{ listen {SERVER}:8080; location / {{ return 200 "served by ep2\\n"; }} }}
}}
""")
    lab.spawn(lab.ns("ep2"), "nginx", "-c", str(conf), "-p", str(nginx_dir))
    proxy = start_sluice(TRANSPARENT_CONFIG, netns=lab.node)
    divert(lab)
    deadline = time.monotonic() + 5
    while not (nginx_dir / "nginx.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    result = lab.run(lab.ns("ep1"), "curl", "-sS", "--max-time", "5", f"http://{SERVER}:8080/hello", check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "served by ep2\n"
    # The server saw the node's address (the proxy's upstream leg), not the client's:
    # the connection went through sluice, not straight through the router.
    access = access_log_lines(nginx_dir / "access.log")
    assert access == [f"{NODE_TO_SERVER} GET /hello HTTP/1.1"], access
    records = proxy.wait_for_flows(1)
    tcp = [r for r in records if "TCP" in r.get("l4", {})]
    assert len(tcp) == 1
    assert tcp[0]["IP"]["source"] == CLIENT
    assert tcp[0]["IP"]["destination"] == SERVER
    assert tcp[0]["l4"]["TCP"]["destination_port"] == 8080
    assert tcp[0]["proxy"]["listener"] == "tcp-redirect"


def test_transparent_udp_replies_come_from_the_original_destination(lab, start_sluice):
    lab.spawn(lab.ns("ep2"), "python3", "-c", UDP_ECHO, SERVER, "5353")
    proxy = start_sluice(TRANSPARENT_CONFIG, netns=lab.node)
    divert(lab)
    client_code = textwrap.dedent(f"""
        import socket, time
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        for attempt in range(20):
            s.sendto(b"ping", ("{SERVER}", 5353))
            try:
                data, peer = s.recvfrom(65535)
                print(data.decode(), peer[0], peer[1])
                break
            except socket.timeout:
                time.sleep(0.1)
    """)
    result = lab.run(lab.ns("ep1"), "python3", "-c", client_code, timeout=30)
    # The answer came from the address the client asked, and the server saw the node.
    assert result.stdout.strip() == f"echo:ping from-peer:{NODE_TO_SERVER} {SERVER} 5353", result.stdout + result.stderr
    # The session ends after udpIdle (1s) and is reported. (A ping sent before the echo server
    # was listening makes a session of its own that ends unanswered: the answered one is judged.)
    deadline = time.monotonic() + 5
    answered = []
    while not answered and time.monotonic() < deadline:
        answered = [r for r in proxy.flow_records()
                    if "UDP" in r.get("l4", {}) and r.get("proxy", {}).get("datagrams_from_server", 0) >= 1]
        time.sleep(0.05)
    assert answered, proxy.flow_records()
    assert answered[0]["IP"]["source"] == CLIENT and answered[0]["IP"]["destination"] == SERVER


def test_connection_to_the_listener_itself_is_refused(lab, start_sluice):
    proxy = start_sluice(TRANSPARENT_CONFIG, netns=lab.node)
    result = lab.run(lab.node, "curl", "-sS", "--max-time", "3", "http://127.0.0.1:15001/", check=False)
    assert result.returncode != 0
    records = proxy.wait_for_flows(1)
    assert records[0]["verdict"] == "DROPPED"
    assert "not diverted" in records[0]["drop_reason_desc"]


def test_a_full_udp_session_table_evicts_the_least_recently_active_session(lab, start_sluice):
    """Room for two sessions (one worker): clients A, B, then A again, then C. B was active
    least recently, so C's session evicts B's, not A's (the older one by creation)."""
    lab.spawn(lab.ns("ep2"), "python3", "-c", UDP_ECHO, SERVER, "5353")
    config = (TRANSPARENT_CONFIG.replace("workers: 2", "workers: 1")
              .replace("timeouts: {udpIdle: 1s, drain: 2s}", "timeouts: {udpIdle: 30s, drain: 2s}\nlimits: {maxUDPSessionsPerWorker: 2}"))
    proxy = start_sluice(config, netns=lab.node)
    divert(lab)
    client_code = textwrap.dedent(f"""
        import socket, time
        sockets = {{name: socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for name in "ABC"}}
        for name, s in sockets.items():
            s.bind(("{CLIENT}", {{"A": 41001, "B": 41002, "C": 41003}}[name]))
            s.settimeout(2)
        def ask(name):
            for attempt in range(20):
                sockets[name].sendto(name.encode(), ("{SERVER}", 5353))
                try:
                    return sockets[name].recvfrom(65535)[0].decode()
                except socket.timeout:
                    time.sleep(0.1)
        for name in "ABAC":
            print(ask(name))
            time.sleep(0.05)
    """)
    result = lab.run(lab.ns("ep1"), "python3", "-c", client_code, timeout=60)
    assert [line.split(" ")[0] for line in result.stdout.split("\n") if line] == ["echo:A", "echo:B", "echo:A", "echo:C"]
    records = proxy.wait_for_flows(1, timeout=5)
    ended = [r["l4"]["UDP"]["source_port"] for r in records if "UDP" in r.get("l4", {}) and "proxy" in r]
    assert ended == [41002], f"only B's session ends (evicted), got {ended}"
