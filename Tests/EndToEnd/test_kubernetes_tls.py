"""End-to-end: Sluice's Kubernetes client over TLS, configured by kubeconfig files, on
loopback. The API server is the kmock EMULATOR (Tests/EndToEnd/kube_emulator.py: no real
kube-apiserver can run here) behind a real nginx that terminates TLS the way an API server
does: a server certificate signed by a test CA (made with the openssl command), client
certificates checked against that CA on one port, a bearer token checked on another.

Starts: openssl (certificates), the emulator, nginx (TLS), the sluice binary
(`run --kubernetes --check`, and `run` with no datapath for the watch)."""
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

from conftest import SLUICE, free_port, wait_for_port

EMULATOR = __import__("pathlib").Path(__file__).with_name("kube_emulator.py")
TOKEN = "t0ken-for-the-test"


def openssl(*arguments, cwd):
    subprocess.run(["openssl", *arguments], cwd=cwd, check=True, capture_output=True)


def make_certificates(directory):
    """A CA, a server certificate for 127.0.0.1 (IP SAN), a client certificate, and a
    second CA that signed nothing of this server's."""
    for name in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=directory)
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("named", "subjectAltName=DNS:kube.test"),
                            ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                cwd=directory)
        (directory / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
                "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=directory)


@pytest.fixture
def tls_api(workdir):
    make_certificates(workdir)
    emulator_port = free_port()
    log = open(workdir / "emulator.log", "w")
    emulator = subprocess.Popen([sys.executable, str(EMULATOR), "--port", str(emulator_port)], stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(emulator_port)
    ports = {"client-cert": free_port(), "token": free_port(), "named": free_port()}
    upstream = f"""proxy_pass http://127.0.0.1:{emulator_port}; proxy_http_version 1.1; proxy_buffering off;
                   proxy_read_timeout 3600s;"""
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; error_log {workdir}/nginx-error.log; pid {workdir}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  access_log {workdir}/nginx-access.log;
  client_body_temp_path {workdir}/b; proxy_temp_path {workdir}/p; fastcgi_temp_path {workdir}/f;
  uwsgi_temp_path {workdir}/u; scgi_temp_path {workdir}/s;
  ssl_certificate {workdir}/server.crt; ssl_certificate_key {workdir}/server.key;
  server {{
    listen 127.0.0.1:{ports["client-cert"]} ssl;
    ssl_client_certificate {workdir}/ca.crt; ssl_verify_client on;
    location / {{ {upstream} }}
  }}
  server {{
    listen 127.0.0.1:{ports["token"]} ssl;
    location / {{
      if ($http_authorization != "Bearer {TOKEN}") {{ return 401 '{{"kind":"Status","code":401,"message":"Unauthorized"}}'; }}
      {upstream}
    }}
  }}
  server {{
    listen 127.0.0.1:{ports["named"]} ssl;
    ssl_certificate {workdir}/named.crt; ssl_certificate_key {workdir}/named.key;
    location / {{ {upstream} }}
  }}
}}
""")
    processes = {}

    def start_nginx():
        processes["nginx"] = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(workdir)], stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL, start_new_session=True)
        for port in ports.values():
            wait_for_port(port)

    def stop_nginx():
        # Master and worker killed at once: every open connection is dropped, none finished.
        os.killpg(processes["nginx"].pid, signal.SIGKILL)
        processes["nginx"].wait(10)

    start_nginx()
    yield {"ports": ports, "emulator": emulator_port, "dir": workdir, "start_nginx": start_nginx, "stop_nginx": stop_nginx}
    if processes["nginx"].poll() is None:
        stop_nginx()
    emulator.terminate()
    emulator.wait(10)
    log.close()


def kubeconfig(directory, name, port, cluster_extra, user):
    path = directory / f"kubeconfig-{name}"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}", **cluster_extra}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}]}))
    config = directory / f"sluice-{name}.yaml"
    config.write_text(textwrap.dedent(f"""\
        listeners: [{{name: web, mode: explicit, listen: 127.0.0.1:{free_port()}, upstream: 127.0.0.1:9}}]
        policy: {{source: kubernetes, kubernetes: {{kubeconfig: {path}, nodeName: node-a, syncTimeout: 10s}}}}
        control: {{socket: none}}
        """))
    return config


def check(config):
    return subprocess.run([SLUICE, "run", "--config", str(config), "--kubernetes", "--check"], capture_output=True, text=True,
                          timeout=60)


def data(directory, name):
    return base64.b64encode((directory / name).read_bytes()).decode()


def stderr_path_of(workdir, config):
    return workdir / f"{config.stem}.stderr"


def wait_until_ready(path, timeout=20):
    """`ready:` is said once every resource was listed and the listeners serve."""
    deadline = time.monotonic() + timeout
    while "ready:" not in path.read_text():
        assert time.monotonic() < deadline, path.read_text()
        time.sleep(0.05)


def create(api, path, obj):
    request = urllib.request.Request(f"http://127.0.0.1:{api['emulator']}{path}", data=json.dumps(obj).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    urllib.request.urlopen(request, timeout=5).read()


def test_client_certificate_and_ca_data(tls_api):
    directory = tls_api["dir"]
    create(tls_api, "/api/v1/namespaces/shop/pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"},
                                                     "spec": {"nodeName": "node-a"}, "status": {"podIP": "10.1.0.1"}})
    config = kubeconfig(directory, "cert", tls_api["ports"]["client-cert"], {"certificate-authority-data": data(directory, "ca.crt")},
                        {"client-certificate-data": data(directory, "client.crt"), "client-key-data": data(directory, "client.key")})
    result = check(config)
    assert result.returncode == 0, result.stderr
    assert "1 pods" in result.stdout and "1 local endpoint address" in result.stdout

    # Without the client certificate nginx refuses the handshake's result (400 from the API side).
    config = kubeconfig(directory, "nocert", tls_api["ports"]["client-cert"], {"certificate-authority": str(directory / "ca.crt")},
                        {"token": TOKEN})
    result = check(config)
    assert result.returncode == 1
    assert "HTTP 400" in result.stderr, result.stderr


def test_token_ca_file_and_the_server_certificate_checks(tls_api):
    directory = tls_api["dir"]
    port = tls_api["ports"]["token"]
    good = check(kubeconfig(directory, "token", port, {"certificate-authority": str(directory / "ca.crt")}, {"token": TOKEN}))
    assert good.returncode == 0, good.stderr

    wrong_token = check(kubeconfig(directory, "badtoken", port, {"certificate-authority": str(directory / "ca.crt")}, {"token": "nope"}))
    assert wrong_token.returncode == 1 and "HTTP 401: Unauthorized" in wrong_token.stderr, wrong_token.stderr

    # A CA that did not sign the server's certificate: the handshake fails, and says why.
    wrong_ca = check(kubeconfig(directory, "wrongca", port, {"certificate-authority": str(directory / "other-ca.crt")}, {"token": TOKEN}))
    assert wrong_ca.returncode == 1
    assert "TLS handshake with 127.0.0.1" in wrong_ca.stderr and "certificate" in wrong_ca.stderr, wrong_ca.stderr

    # insecure-skip-tls-verify takes the same server without checking it.
    insecure = check(kubeconfig(directory, "insecure", port, {"certificate-authority": str(directory / "other-ca.crt"),
                                                              "insecure-skip-tls-verify": True}, {"token": TOKEN}))
    assert insecure.returncode == 0, insecure.stderr

    # A certificate signed by the right CA but for another name (kube.test, not 127.0.0.1).
    named = check(kubeconfig(directory, "named", tls_api["ports"]["named"], {"certificate-authority": str(directory / "ca.crt")},
                             {"token": TOKEN}))
    assert named.returncode == 1 and "TLS handshake" in named.stderr, named.stderr


POLICY_OBJECTS = 'sluice_kubernetes_objects{resource="ciliumnetworkpolicies"}'


@contextlib.contextmanager
def watching_sluice(tls_api, workdir, name):
    """sluice run against the TLS API server (token, CA data) with metrics on, ready; yields
    its stderr file and a reader of its CiliumNetworkPolicy object-count lines."""
    directory = tls_api["dir"]
    config = kubeconfig(directory, name, tls_api["ports"]["token"], {"certificate-authority-data": data(directory, "ca.crt")},
                        {"token": TOKEN})
    metrics_port = free_port()
    config.write_text(config.read_text() + f"metrics: {{listen: 127.0.0.1:{metrics_port}}}\n")
    stderr_path = stderr_path_of(workdir, config)
    stderr = open(stderr_path, "w")
    process = subprocess.Popen([SLUICE, "run", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_until_ready(stderr_path)

        def policies():
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            except OSError as error:
                # Say whether sluice is still running and what it said (seen once: refused
                # after a resumed watch, not reproduced in 40 runs alone).
                raise AssertionError(f"metrics on 127.0.0.1:{metrics_port}: {error}; sluice exit status "
                                     f"{process.poll()} (None: running); its stderr:\n{stderr_path.read_text()}") from error
            return [line for line in text.splitlines() if line.startswith(POLICY_OBJECTS)]

        yield stderr_path, policies
    finally:
        process.terminate()
        process.wait(20)
        stderr.close()


def test_the_watch_streams_over_tls(tls_api, workdir):
    with watching_sluice(tls_api, workdir, "watch") as (stderr_path, objects):
        assert objects() == [f"{POLICY_OBJECTS} 0"]
        create(tls_api, "/apis/cilium.io/v2/namespaces/shop/ciliumnetworkpolicies",
               {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "p", "namespace": "shop"},
                "spec": {"endpointSelector": {}, "ingress": [{}]}})
        deadline = time.monotonic() + 10
        while objects() != [f"{POLICY_OBJECTS} 1"]:
            assert time.monotonic() < deadline, stderr_path.read_text()
            time.sleep(0.1)
        while "CiliumNetworkPolicy shop/p changed" not in stderr_path.read_text():
            assert time.monotonic() < deadline, stderr_path.read_text()
            time.sleep(0.1)


def diagnosis(stderr_path):
    """What sluice's threads and sockets were doing (seen once in 60 runs under load: no
    watch reported its end within 20 s, and sluice held no TCP connection at all)."""
    pids = [line.rsplit("pid ", 1)[1].strip() for line in stderr_path.read_text().splitlines() if "ready:" in line and "pid " in line]
    text = "\n" + subprocess.run(["ss", "-tanpo"], capture_output=True, text=True).stdout
    if pids and shutil.which("gdb"):
        text += subprocess.run(["gdb", "-batch", "-p", pids[-1], "-ex", "thread apply all bt 12"],
                               capture_output=True, text=True, timeout=60).stdout
    return text


def test_a_dropped_watch_resumes_from_its_version(tls_api, workdir):
    """The connection to the API server drops (nginx stops) while the API server itself
    keeps running: sluice watches again from the last resourceVersion it saw (no 410, no
    relist), and what was created meanwhile arrives. (The emulator replays its objects on
    every watch whatever the version; a real API server sends the events after it.)"""
    with watching_sluice(tls_api, workdir, "resume") as (stderr_path, policies):
        tls_api["stop_nginx"]()
        deadline = time.monotonic() + 20
        while "watch /apis/cilium.io/v2/ciliumnetworkpolicies ended" not in stderr_path.read_text():
            assert time.monotonic() < deadline, stderr_path.read_text() + diagnosis(stderr_path)
            time.sleep(0.1)
        assert "(resuming from " in stderr_path.read_text()
        create(tls_api, "/apis/cilium.io/v2/namespaces/shop/ciliumnetworkpolicies",
               {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "meanwhile", "namespace": "shop"},
                "spec": {"endpointSelector": {}, "ingress": [{}]}})
        assert policies() == [f"{POLICY_OBJECTS} 0"]
        tls_api["start_nginx"]()
        deadline = time.monotonic() + 30
        while policies() != [f"{POLICY_OBJECTS} 1"]:
            assert time.monotonic() < deadline, stderr_path.read_text()
            time.sleep(0.1)
        text = stderr_path.read_text()
        assert "410 Gone" not in text and "listing /apis/cilium.io/v2/ciliumnetworkpolicies" not in text, text
