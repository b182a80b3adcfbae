"""``mmvm site check --superlink``: the TLS check against a TLS server on 127.0.0.1
with certificates made by ``deploy/make_keys.py`` (the real SuperLink is checked in
tests/deploy/test_deployment.py)."""

from __future__ import annotations

import socket
import ssl
import threading
from contextlib import contextmanager
from pathlib import Path

from deploy import make_keys
from mmvm.cli import main
from mmvm.cli.site_findings import ERROR, OK, WARNING, NodeCheck
from mmvm.cli.site_link import check_superlink
from tests.support.processes import free_port


def _pki(out: Path, hosts=("localhost", "127.0.0.1")) -> Path:
    make_keys.write_all(make_keys.pki_files(out, list(hosts)), force=False)
    return out


@contextmanager
def _server(certs: Path | None):
    """Accepts connections on 127.0.0.1 and, with ``certs``, does the TLS handshake."""
    listener = socket.create_server(("127.0.0.1", free_port("127.0.0.1")))
    context = None
    if certs is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certs / "server.pem", certs / "server.key")
    stop = threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                try:
                    if context is not None:
                        context.wrap_socket(conn, server_side=True).close()
                    else:
                        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                except (ssl.SSLError, OSError):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def _check(address: str, ca) -> list[tuple[str, str]]:
    check = NodeCheck("site-a")
    check_superlink(check, address, None if ca is None else str(ca), timeout=5)
    return [(f.status, f.detail) for f in check.findings]


def test_the_right_ca_verifies_and_names_the_certificate(tmp_path):
    certs = _pki(tmp_path / "pki")
    with _server(certs) as address:
        (status, detail), = _check(address, certs / "ca.crt")
    assert status == OK, detail
    assert f"{address}: TLS verified by {certs / 'ca.crt'}; certificate for localhost, " \
           "127.0.0.1, valid until" in detail


def test_another_ca_is_named_as_not_the_one_that_signed_it(tmp_path):
    certs, other = _pki(tmp_path / "pki"), _pki(tmp_path / "other")
    with _server(certs) as address:
        (status, detail), = _check(address, other / "ca.crt")
    assert status == ERROR
    assert f"does not verify against {other / 'ca.crt'}" in detail
    assert "not the CA that signed it" in detail


def test_an_address_the_certificate_is_not_for_lists_the_names_it_is_for(tmp_path):
    certs = _pki(tmp_path / "pki", hosts=("superlink.example.org", "10.0.0.5"))
    with _server(certs) as address:
        (status, detail), = _check(address, certs / "ca.crt")
    assert status == ERROR
    assert "not for '127.0.0.1' (it names superlink.example.org, 10.0.0.5)" in detail


def test_a_certificate_about_to_expire_is_warned_of(tmp_path, monkeypatch):
    monkeypatch.setattr(make_keys, "SERVER_DAYS", 10)
    certs = _pki(tmp_path / "pki")
    with _server(certs) as address:
        found = _check(address, certs / "ca.crt")
    assert [s for s, _ in found] == [OK, WARNING]
    assert "expires in 9 days" in found[1][1] or "expires in 10 days" in found[1][1]


def test_an_expired_certificate_is_not_blamed_on_the_ca_file(tmp_path, monkeypatch):
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    certs = _pki(tmp_path / "pki")  # the CA, valid; its server certificate replaced
    ca_cert = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    monkeypatch.setattr(make_keys, "_now", lambda: dt.datetime.now(dt.UTC)
                        - dt.timedelta(days=make_keys.SERVER_DAYS + 2))
    cert, key = make_keys.make_server_cert(ca_cert, ca_key, ["localhost", "127.0.0.1"])
    (certs / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (certs / "server.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with _server(certs) as address:
        (status, detail), = _check(address, certs / "ca.crt")
    assert status == ERROR and "certificate has expired" in detail, detail
    assert "renew" in detail and "not the CA" not in detail


def test_no_tls_an_unreachable_port_and_a_bad_ca_file(tmp_path):
    certs = _pki(tmp_path / "pki")
    with _server(None) as address:
        (status, detail), = _check(address, certs / "ca.crt")
        assert status == ERROR and f"no TLS at {address}" in detail
        assert "--insecure" in detail
        (status, detail), = _check(address, None)
        assert status == WARNING and "reachable; TLS not checked" in detail
    closed = f"127.0.0.1:{free_port('127.0.0.1')}"
    (status, detail), = _check(closed, certs / "ca.crt")
    assert status == ERROR and f"cannot reach {closed}" in detail
    with _server(certs) as address:
        (status, detail), = _check(address, certs / "server.key")
    assert status == ERROR and "not a readable PEM CA certificate" in detail


def test_the_cli_adds_the_superlink_to_the_node_config_check(tmp_path, capsys):
    certs = _pki(tmp_path / "pki")
    data = tmp_path / "site-a"
    nc = f'data="{data}"'
    with _server(certs) as address:
        code = main(["site", "check", "--node-config", nc, "--superlink", address,
                     "--root-certificates", str(certs / "ca.crt")])
    out = capsys.readouterr()
    assert code == 1  # the data folder is missing
    assert f"superlink   {address}: TLS verified by" in out.out
    assert main(["site", "check", "--node-config", nc, "--root-certificates",
                 str(certs / "ca.crt")]) == 2
    assert "--root-certificates needs --superlink" in capsys.readouterr().err
    assert main(["site", "check", "--node-config", nc, "--superlink", "superlink"]) == 2
    assert "--superlink 'superlink': give host:port" in capsys.readouterr().err
