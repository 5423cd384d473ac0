"""``edgert serve`` as a user starts it: a local Ray in the process, loopback only by default,
Ctrl-C stops it; bad arguments are one-line errors before anything starts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request

import pytest

pytest.importorskip("ray", reason="the serve extra (ray[serve]) is not installed")

from conftest import assert_user_error, edgert, free_port  # noqa: E402


def _outward_address() -> str | None:
    """This machine's address on its network (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent, the kernel picks the outgoing address
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


# A method of each Ray service that listens (GCS, raylet, core worker, agents): a server that has
# it answers UNAUTHENTICATED without Ray's token, one that has none of them UNIMPLEMENTED.
RAY_METHODS = ("/ray.rpc.NodeInfoGcsService/GetAllNodeInfo", "/ray.rpc.NodeManagerService/GetNodeStats",
               "/ray.rpc.CoreWorkerService/GetCoreWorkerStats", "/ray.rpc.ReporterService/ReportOCMetrics",
               "/ray.rpc.LogService/ListLogs", "/ray.serve.ASGIService/HandleRequest")
# what a server says without the token, or where it has no such method or is no gRPC server
REFUSED = ("UNAUTHENTICATED", "UNIMPLEMENTED", "UNAVAILABLE", "DEADLINE_EXCEEDED")


def _listening(pid: int) -> list[tuple[str, str, int]]:
    """(process, address, port) of every TCP socket the process tree of ``pid`` listens on."""
    psutil = pytest.importorskip("psutil")
    root, found = psutil.Process(pid), []
    for process in [root, *root.children(recursive=True)]:
        try:
            found += [(process.name(), s.laddr.ip, s.laddr.port) for s in process.net_connections(kind="tcp")
                      if s.status == psutil.CONN_LISTEN]
        except psutil.Error:
            continue
    return found


def _loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1") or ip.startswith("::ffff:127.")


def _answer_without_token(sockets: list[tuple[str, str, int]]) -> list[str]:
    """Probe each socket without Ray's token: a gRPC call to each Ray method, and an HTTP request
    (a job submission, then GET /). Returns what answered: a gRPC method that succeeded, an HTTP
    route that did anything but 401, except Prometheus text (Ray's autoscaler and dashboard
    metrics, read-only)."""
    import http.client
    import urllib.error

    grpc = pytest.importorskip("grpc")
    answered = []
    for name, ip, port in sockets:
        host = "127.0.0.1" if ip in ("0.0.0.0", "::") or _loopback(ip) else ip
        where = f"{name} {ip}:{port}"
        with grpc.insecure_channel(f"{host}:{port}") as channel:
            for method in RAY_METHODS:
                try:
                    channel.unary_unary(method)(b"", timeout=5)
                    answered.append(f"{where} gRPC {method}")
                except grpc.RpcError as err:  # any other code: the method ran on our empty request
                    if err.code().name not in REFUSED:
                        answered.append(f"{where} gRPC {method} {err.code().name}")
        for path, body in (("/api/job_agent/jobs/", b"{}"), ("/", None)):
            try:
                with urllib.request.urlopen(f"http://{host}:{port}{path}", data=body, timeout=5) as r:
                    text = r.read(64)
                    if not text.startswith(b"# HELP"):
                        answered.append(f"{where} HTTP {path} {r.status}")
            except urllib.error.HTTPError as err:
                if err.code not in (401, 405):
                    answered.append(f"{where} HTTP {path} {err.code}")
            except (OSError, ValueError, http.client.HTTPException):  # not HTTP: a gRPC server
                pass
    return answered


def test_serve_arguments_are_checked_before_anything_starts(tiny_bundle, tmp_path):
    assert_user_error(edgert("serve", tmp_path / "missing"), "missing")
    assert_user_error(edgert("serve", tiny_bundle, "--replicas", "tsn-tiny=0"), "--replicas", "NAME=N")
    assert_user_error(edgert("serve", f"a={tiny_bundle}", f"a={tiny_bundle}"), "two bundles are named 'a'")
    assert_user_error(edgert("serve", f"bad/name={tiny_bundle}"), "not a bundle directory")  # a path, not NAME=PATH
    assert_user_error(edgert("serve", f"b@d={tiny_bundle}"), "model name 'b@d'")
    assert_user_error(edgert("serve", tiny_bundle, "--replicas", "other=2"), "'other', which is not served")
    assert_user_error(edgert("serve", tiny_bundle, "--draft", "small"), "--draft 'small': expected NAME=BUNDLE")
    assert_user_error(edgert("serve", tiny_bundle, "--draft", f"small={tmp_path / 'missing'}"), "not a bundle directory")
    assert_user_error(edgert("serve", tiny_bundle, "--draft", f"small={tiny_bundle}"),
                      "a draft model must be a decoder bundle, this is a detector bundle")


def test_serve_cli_listens_on_loopback_and_stops_on_ctrl_c(tiny_bundle):
    port = free_port()
    env = {**os.environ, "EDGERT_API_KEY": "k3y"}
    # Ctrl-C as a terminal delivers it: a shell that ran this suite in the background (`make test &`)
    # leaves SIGINT ignored, children inherit that, and Python then installs no KeyboardInterrupt handler
    process = subprocess.Popen([sys.executable, "-m", "edgert", "serve", f"tsn={tiny_bundle}", "--port", str(port),
                                "--cpus-per-replica", "0.5"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines, serving = [], threading.Event()

    def pump():  # stderr line by line, as it comes (Ray's log lines, then ours)
        for line in process.stderr:
            lines.append(line)
            if line.startswith("edgert: serving"):
                serving.set()
        serving.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        assert serving.wait(300) and lines and lines[-1].startswith("edgert: serving tsn (detector) on http://127.0.0.1:"), lines
        assert "API key required" in lines[-1]
        assert [line for line in lines if "INFO" in line] == []  # Ray's and Serve's chatter only with --verbose
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer k3y"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert [m["id"] for m in json.loads(response.read())["data"]] == ["tsn"]
        outward = _outward_address()
        if outward is not None:  # bound to 127.0.0.1: the machine's network address does not answer
            with pytest.raises(OSError), socket.create_connection((outward, port), timeout=5):
                pass
        # every port of Ray's is on loopback; Serve's replicas bind their inter-deployment gRPC
        # server to [::] (hard-coded in Ray Serve 2.60); none but ours serves a caller without the
        # session's token
        sockets = _listening(process.pid)
        assert len(sockets) > 5, sockets
        assert [s for s in sockets if not _loopback(s[1]) and not s[0].startswith("ray::ServeReplica")] == [], sockets
        assert _answer_without_token([s for s in sockets if s[2] != port]) == []
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            reader.join(timeout=30)
            pytest.fail("edgert serve did not stop within 120 s of SIGINT; its stderr ended:\n" + "".join(lines[-15:]))
        reader.join(timeout=30)
    err = "".join(lines)
    assert process.returncode == 130, err
    assert "Traceback" not in err, err
