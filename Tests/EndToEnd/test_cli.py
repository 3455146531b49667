"""End-to-end: the `sluice` command line. Starts: the sluice binary."""
import subprocess

from conftest import SLUICE, own_state


def run(*args):
    return subprocess.run([SLUICE, *args], capture_output=True, text=True, timeout=30)


def test_version():
    result = run("version")
    assert result.returncode == 0
    assert result.stdout.startswith("sluice ")


def test_help_explains_run():
    result = run("run", "--help")
    assert result.returncode == 0
    assert "--config" in result.stdout and "SIGTERM" in result.stdout


def test_broken_config_fails_with_file_line_column_and_key(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("listeners:\n  - name: web\n    mode: explicit\n    listen: 127.0.0.1:15080\n    upstream: nginx:80\n")
    result = run("run", "--config", str(config))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"sluice: {config}:5:15: listeners[0].upstream: expected a numeric address")


def test_yaml_syntax_error_is_located(tmp_path):
    config = tmp_path / "syntax.yaml"
    config.write_text("listeners:\n  - name: [web\n")
    result = run("run", "--config", str(config))
    assert result.returncode == 2
    assert f"{config}:3:1: not valid YAML" in result.stderr


def test_missing_config_file(tmp_path):
    result = run("run", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml: cannot read the file" in result.stderr


def test_bad_flag_exits_2():
    result = run("run", "--config", "x.yaml", "--workers", "0")
    assert result.returncode == 2
    assert "--workers must be from 1 to 256" in result.stderr
    result = run("run", "--bogus")
    assert result.returncode == 2


def test_check_validates_without_starting(tmp_path):
    config = tmp_path / "ok.yaml"
    config.write_text("listeners:\n  - {name: web, mode: explicit, listen: 127.0.0.1:1, upstream: 127.0.0.1:2}\n")
    result = run("run", "--config", str(config), "--check")
    assert result.returncode == 0
    assert "ok (1 listeners" in result.stdout


def test_endpoints_on_nodes_need_to_know_which_node_this_is(tmp_path):
    """Issue 15 item 3: an endpoints file that places pods on nodes is refused by a sluice that
    does not say which node it runs on (policy.node), and a bad node name names its place."""
    (tmp_path / "policy.yaml").write_text("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: shop}\n"
                                          "spec: {endpointSelector: {matchLabels: {app: api}}, ingress: [{}]}\n")
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text("endpoints:\n  - {ip: 10.0.0.1, namespace: shop, labels: {app: api}, node: node1}\n"
                         "  - {ip: 10.0.0.2, namespace: shop, labels: {app: web}, node: node2}\n")
    config = tmp_path / "sluice.yaml"
    listener = "listeners:\n  - {name: web, mode: explicit, listen: 127.0.0.1:1, upstream: 127.0.0.1:2}\n"
    config.write_text(own_state(listener + "policy: {paths: [policy.yaml], endpoints: endpoints.yaml}\n", tmp_path))
    result = run("run", "--config", str(config))
    assert result.returncode == 2
    assert ("endpoints.yaml: endpoints are placed on nodes (node1, node2) but the configuration does not say which node "
            "this sluice runs on: add policy.node") in result.stderr, result.stderr
    config.write_text(own_state(listener + "policy: {paths: [policy.yaml], endpoints: endpoints.yaml, node: node1}\n", tmp_path))
    endpoints.write_text(endpoints.read_text().replace("node: node2", "node: Node_2"))
    result = run("run", "--config", str(config))
    assert result.returncode == 2
    assert "endpoints.yaml:3:63: endpoints[1].node: expected a node name" in result.stderr, result.stderr


def test_listener_that_cannot_bind_names_itself(tmp_path):
    import socket
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    config = tmp_path / "busy.yaml"
    config.write_text(own_state(f"listeners:\n  - {{name: web, mode: explicit, listen: 127.0.0.1:{port}, upstream: 127.0.0.1:2}}\n", tmp_path))
    # SO_REUSEPORT lets sockets of the same user share a port only if all set it; the
    # holder did not, so the bind fails and sluice must say which listener and why.
    result = run("run", "--config", str(config))
    holder.close()
    assert result.returncode == 1
    assert f"listener 'web' on 127.0.0.1:{port}: bind(127.0.0.1:{port}): Address already in use" in result.stderr


def test_fqdn_list_explains_what_it_cannot_read(tmp_path):
    missing = subprocess.run([SLUICE, "fqdn", "list", "--state", str(tmp_path / "none.json")], capture_output=True, text=True)
    assert missing.returncode == 1 and "none.json" in missing.stderr and "cannot be read" in missing.stderr, missing.stderr
    corrupt = tmp_path / "fqdn.json"
    corrupt.write_text("{not json")
    result = subprocess.run([SLUICE, "fqdn", "list", "--state", str(corrupt)], capture_output=True, text=True)
    assert result.returncode == 1 and "not a sluice fqdn state file" in result.stderr, result.stderr
    config = tmp_path / "sluice.yaml"
    config.write_text("listeners:\n  - {name: a, mode: explicit, listen: 127.0.0.1:1, upstream: 127.0.0.1:2}\n"
                      "fqdn: {stateFile: none}\n")
    result = subprocess.run([SLUICE, "fqdn", "list", "--config", str(config)], capture_output=True, text=True)
    assert result.returncode == 1 and "memory only" in result.stderr, result.stderr
    both = subprocess.run([SLUICE, "fqdn", "list"], capture_output=True, text=True)
    assert both.returncode == 2 and "--config" in both.stderr, both.stderr
    empty = tmp_path / "empty.json"
    empty.write_text('{"version": 1, "records": []}')
    result = subprocess.run([SLUICE, "fqdn", "list", "--state", str(empty)], capture_output=True, text=True)
    assert result.returncode == 0 and "(no learned addresses)" in result.stdout, result.stdout
