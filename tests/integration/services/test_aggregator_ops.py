"""Running the aggregator: mutual TLS, the token commands, and a real `serve` process."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from aggregator_harness import (
    REDIS_URL,
    batch,
    event,
    keys_of,
    run_async,
    running,
)
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.aggregator import schema
from services.aggregator.auth import FileTokenStore
from services.aggregator.cli import aggregator
from slimspect.v1 import inspection_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.timeout(60)


# --- mutual TLS ----------------------------------------------------------------------------


def _cert(subject: str, key, issuer=None, issuer_key=None, *, ca=False, server=False):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1, and a client certificate, as PEM files."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("slimspect test CA", ca_key, ca=True)
    files: dict[str, bytes] = {"ca.pem": _pem(ca)}
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(role, key, ca, ca_key, server=role == "server")
        files[f"{role}.pem"] = _pem(cert)
        files[f"{role}.key"] = _key_pem(key)
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in files}


def test_mutual_tls_accepts_only_clients_with_a_certificate(ns, pki):
    station = ns.station()
    read = {k: v.read_bytes() for k, v in pki.items()}

    async def attempt(run, token, creds) -> grpc.StatusCode | int:
        async with grpc.aio.secure_channel(f"127.0.0.1:{run.port}", creds) as channel:
            call = pb_grpc.IngestStub(channel).Report(
                metadata=[("authorization", f"Bearer {token}")]
            )
            try:
                await call.write(batch(1, [event(station)]))
                ack = await call.read()
                return ack.accepted
            except grpc.aio.AioRpcError as exc:
                return exc.code()

    async def main() -> list:
        tls = {"tls_cert": pki["server.pem"], "tls_key": pki["server.key"], "tls_ca": pki["ca.pem"]}
        async with running(ns, **tls) as run:
            token = await run.token(station)
            with_cert = grpc.ssl_channel_credentials(
                read["ca.pem"], read["client.key"], read["client.pem"]
            )
            without_cert = grpc.ssl_channel_credentials(read["ca.pem"])
            results = [
                await attempt(run, token, with_cert),
                await attempt(run, token, without_cert),
            ]
            async with grpc.aio.insecure_channel(f"127.0.0.1:{run.port}") as plain:
                health = health_pb2_grpc.HealthStub(plain)
                try:
                    await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    results.append("plaintext answered")
                except grpc.aio.AioRpcError as exc:
                    results.append(exc.code())
            return results

    ok, no_cert, plaintext = run_async(main())
    assert ok == 1
    assert no_cert == grpc.StatusCode.UNAVAILABLE
    assert plaintext in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


# --- token commands -----------------------------------------------------------------------


def test_token_commands_with_a_token_file(tmp_path):
    path = tmp_path / "secrets" / "tokens.json"
    env = {
        "SLIMSPECT_AGGREGATOR_TOKEN_STORE": "file",
        "SLIMSPECT_AGGREGATOR_TOKEN_FILE": str(path),
    }
    runner = CliRunner()
    added = runner.invoke(aggregator, ["token", "add", "line1-st3"], env=env)
    assert added.exit_code == 0, added.output
    token = added.stdout.strip().splitlines()[-1]
    assert token.startswith("sst_")
    assert token not in path.read_text()  # only the digest is stored
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert run_async(FileTokenStore(path).station_for(token)) == "line1-st3"
    assert run_async(FileTokenStore(path).station_for(token + "x")) is None

    listed = runner.invoke(aggregator, ["token", "list"], env=env)
    assert "line1-st3" in listed.output and token not in listed.output
    revoked = runner.invoke(aggregator, ["token", "revoke", "line1-st3"], env=env)
    assert "revoked 1 token" in revoked.output
    assert run_async(FileTokenStore(path).station_for(token)) is None

    bad = runner.invoke(aggregator, ["token", "add", "no{tag}s"], env=env)
    assert bad.exit_code == 1 and "Error:" in bad.output and "Traceback" not in bad.output


def test_help_everywhere():
    runner = CliRunner()
    for args in (
        [],
        ["serve"],
        ["token"],
        ["token", "add"],
        ["token", "list"],
        ["token", "revoke"],
    ):
        result = runner.invoke(aggregator, [*args, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output


# --- a real daemon ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_health_metrics_and_stops_on_sigterm(client, ns, tmp_path):
    station = ns.station()
    port, metrics_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "SLIMSPECT_AGGREGATOR_PORT": str(port),
        "SLIMSPECT_AGGREGATOR_METRICS_PORT": str(metrics_port),
        "SLIMSPECT_AGGREGATOR_REDIS_URL": REDIS_URL,
        "SLIMSPECT_AGGREGATOR_TOKEN_STORE": "file",
        "SLIMSPECT_AGGREGATOR_TOKEN_FILE": str(tmp_path / "tokens.json"),
    }
    added = CliRunner().invoke(aggregator, ["token", "add", station], env=env)
    token = added.stdout.strip().splitlines()[-1]
    code = "from services.aggregator.cli import aggregator; aggregator()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code],  # no command: `serve` is the default
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(service="slimspect.v1.Ingest"))
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            calls = pb_grpc.IngestStub(channel).Report(
                iter([batch(1, [event(station)])]),
                metadata=[("authorization", f"Bearer {token}")],
            )
            (ack,) = list(calls)
            assert ack.accepted == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'slimspect_aggregator_events_total{outcome="accepted"} 1.0' in text
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    messages = [line["msg"] for line in lines]
    assert {"serving", "stream opened", "stopping", "stopped"} <= set(messages)
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    assert len(keys_of(client, station, "ev")) == 1
    assert schema.STATIONS_KEY  # the daemon wrote through the one schema
