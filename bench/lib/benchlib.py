"""Shared pieces of Sluice's benchmarks: starting peers, reading process CPU, running wrk.

Every benchmark runs its peers side by side in one run, interleaved (A B C, A B C, ...),
and reports medians and ratios, because absolute figures on a shared 2-core machine mean
little. Traffic goes to 127.0.0.1 only.
"""
import os
import pathlib
import re
import socket
import statistics
import subprocess
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
SLUICE = os.environ.get("SLUICE_BIN", str(ROOT / ".build" / "release" / "sluice"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing on 127.0.0.1:{port}")


def cpu_times(pids):
    """(user, system) seconds of the given processes (and their threads), from /proc/PID/stat."""
    user = system = 0
    for pid in pids:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        user += int(fields[11])
        system += int(fields[12])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def cpu_seconds(pids):
    """utime + stime of the given processes (and their threads), from /proc/PID/stat."""
    return sum(cpu_times(pids))


def children(pid):
    """Direct children of `pid` (nginx and HAProxy workers)."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def rss_kib(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Workdir:
    def __init__(self, name):
        self.path = pathlib.Path(tempfile.mkdtemp(prefix=f"sluice-bench-{name}-"))
        os.chmod(self.path, 0o755)
        self.processes = []

    def spawn(self, command, **kwargs):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
        self.processes.append(process)
        return process

    def close(self):
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        subprocess.run(["rm", "-rf", str(self.path)])


def start_nginx(workdir, port, body_locations):
    prefix = workdir.path / f"nginx-{port}"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
error_log {prefix}/error.log crit;
pid {prefix}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy; fastcgi_temp_path {prefix}/fcgi;
  uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    {body_locations}
  }}
}}
""")
    process = workdir.spawn(["nginx", "-c", str(conf), "-p", str(prefix)])
    wait_port(port)
    return process


def start_haproxy(workdir, config_text, port):
    conf = workdir.path / f"haproxy-{port}.cfg"
    conf.write_text(config_text)
    process = workdir.spawn(["haproxy", "-f", str(conf), "-db"])
    wait_port(port)
    return process


def start_sluice(workdir, config_text, port):
    conf = workdir.path / f"sluice-{port}.yaml"
    conf.write_text(config_text)
    process = workdir.spawn([SLUICE, "run", "--config", str(conf)])
    wait_port(port)
    return process


WRK_REQUESTS = re.compile(r"Requests/sec:\s+([\d.]+)")
WRK_TOTAL = re.compile(r"(\d+) requests in")
WRK_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def wrk(url, seconds, connections=50, threads=1):
    """Runs wrk; returns (requests/s, total requests, {p50, p99} in ms)."""
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    rate = float(WRK_REQUESTS.search(out).group(1))
    total = int(WRK_TOTAL.search(out).group(1))
    latency = {}
    for percentile, value, unit in WRK_LATENCY.findall(out):
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
        latency[f"p{percentile}"] = float(value) * scale
    return rate, total, latency


def median(values):
    return statistics.median(values) if values else float("nan")


def machine_description():
    cpu = "unknown CPU"
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores ({cpu}), Linux {os.uname().release}"
