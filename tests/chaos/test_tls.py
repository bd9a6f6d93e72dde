"""TLS on the real server, and the refusal to bind a public address without tokens.

A self-signed certificate for 127.0.0.1 is made with the `openssl` CLI. With `[http]
tls_cert` and `tls_key` the server speaks HTTPS only: a client that trusts the certificate
gets its 202, a client that does not trust it fails the handshake, and plain HTTP to the
same port gets no answer. `possync serve` with a non-loopback host and an empty token exits
with code 2 and names the field, without ever listening.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.procserver import ServerProcess, free_port, headers, sale_body, write_config
from tests.support.config import write_toml


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    assert openssl, "the openssl CLI is needed to make the test certificate"
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


async def test_https_push_and_plain_http_refused(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    port = free_port()
    config = write_config(tmp_path, port, http={"tls_cert": str(cert), "tls_key": str(key)})
    server = ServerProcess(config, port, tmp_path / "server.log")
    https = f"https://127.0.0.1:{port}/v1/push/canonical/S1"
    plain = f"http://127.0.0.1:{port}/v1/push/canonical/S1"
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        await server.start()
        trusting = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.post(
                https, data=sale_body("TLS-1"), headers=headers(), ssl=trusting
            ) as resp:
                body = await resp.json()
                assert resp.status == 202, body
                assert body["accepted"] == 1

            # A client with the system trust store refuses the self-signed certificate.
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.post(https, data=sale_body("TLS-2"), headers=headers())

            # Plain HTTP to the TLS port gets no HTTP answer at all.
            with pytest.raises(aiohttp.ClientError):
                async with session.post(plain, data=sale_body("TLS-3"), headers=headers()) as r:
                    pytest.fail(f"plain HTTP got an answer: {r.status}")
        log = (tmp_path / "server.log").read_text(errors="replace")
        assert "Traceback" not in log
    finally:
        await server.stop()


@pytest.mark.parametrize(
    ("admin", "token", "field"),
    [("admin-x", "", "$.stores[0].token"), ("", "store-x", "$.http.admin_token")],
)
def test_refuses_public_bind_with_empty_token(
    tmp_path: Path, admin: str, token: str, field: str
) -> None:
    config = write_toml(
        tmp_path / "public.toml",
        {
            "data_dir": str(tmp_path / "data"),
            "http": {"host": "0.0.0.0", "port": free_port(), "admin_token": admin},
            "stores": [{"id": "S1", "token": token}],
        },
    )
    # A server that wrongly starts would never exit: the timeout makes that a failure.
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "refusing to bind 0.0.0.0" in proc.stderr, proc.stderr
    assert f"(field: {field})" in proc.stderr, proc.stderr
    assert "listening" not in proc.stdout
