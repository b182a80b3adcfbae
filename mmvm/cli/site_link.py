"""``mmvm site check --superlink HOST:PORT --root-certificates ca.crt``: the SuperLink
reached from the site as its SuperNode will reach it, over TLS verified by the CA file
the SuperNode is given.

A SuperNode with the wrong CA file exits with Flower's "certificate verify failed",
without naming the file; one pointed at the wrong port or a firewalled host retries
quietly. This says which, naming the file and what the SuperLink's certificate is for,
and warns of a certificate about to expire. Nothing is sent beyond the TLS handshake.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from pathlib import Path

from mmvm.cli.site_findings import ERROR, OK, WARNING, NodeCheck

EXPIRY_WARNING_DAYS = 30
HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH
IP_MISMATCH = 64  # X509_V_ERR_IP_ADDRESS_MISMATCH
_WRONG_CA = (": that is not the CA that signed it; ask the operator for the "
             "federation's ca.crt")
VERIFY_CAUSES = {  # OpenSSL's X509_V_ERR_* codes -> what to do
    9: ": not valid yet; check this host's clock",
    10: ": ask the operator to renew the SuperLink's certificate",
    18: _WRONG_CA, 19: _WRONG_CA, 20: _WRONG_CA, 21: _WRONG_CA,
}


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> (host, port); ValueError otherwise."""
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"--superlink {address!r}: give host:port as the SuperNode's "
                         f"--superlink (e.g. superlink.example.org:9092)")
    return host, int(port)


def check_superlink(check: NodeCheck, address: str, root_certificates: str | None,
                    timeout: float = 5.0) -> None:
    """Add what reaching ``address`` found: reachable, TLS verified by
    ``root_certificates`` (None: the plain connection only), the certificate's names
    and expiry."""
    host, port = split_address(address)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as err:
        check.add("superlink", ERROR, f"cannot reach {address}: "
                  f"{err.strerror or type(err).__name__} (is the SuperLink running, the "
                  f"address its Fleet API's, and the port open to this host?)")
        return
    if root_certificates is None:
        sock.close()
        check.add("superlink", WARNING, f"{address} is reachable; TLS not checked (give "
                  f"--root-certificates, the CA file the SuperNode gets)")
        return
    ca = Path(root_certificates).expanduser()
    try:
        context = ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as err:
        sock.close()
        check.add("superlink", ERROR, f"--root-certificates {ca}: not a readable PEM "
                  f"CA certificate ({getattr(err, 'strerror', None) or err})")
        return
    _handshake(check, context, sock, host, address, ca, timeout)


def _handshake(check: NodeCheck, context: ssl.SSLContext, sock: socket.socket,
               host: str, address: str, ca: Path, timeout: float) -> None:
    try:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            cert = tls.getpeercert()
    except ssl.SSLCertVerificationError as err:
        sock.close()
        if err.verify_code in (HOSTNAME_MISMATCH, IP_MISMATCH):
            names = _names_without_hostname_check(context, host, address, timeout)
            check.add("superlink", ERROR, f"the SuperLink's certificate is not for "
                      f"{host!r} (it names {', '.join(names) or 'other hosts'}): give "
                      f"the SuperNode --superlink with one of those names")
        else:
            check.add("superlink", ERROR, f"the SuperLink's certificate at {address} "
                      f"does not verify against {ca} ({err.verify_message})"
                      + VERIFY_CAUSES.get(err.verify_code, ""))
        return
    except TimeoutError:
        sock.close()
        check.add("superlink", ERROR, f"{address} accepted the connection but did not "
                  f"answer the TLS handshake within {timeout:g} s (a busy or wrong "
                  f"service on that port?)")
        return
    except (ssl.SSLError, OSError) as err:
        sock.close()
        check.add("superlink", ERROR, f"no TLS at {address} ({err}); a SuperLink "
                  f"started with --insecure speaks plain HTTP: sites need it started "
                  f"with its certificate (deploy/README.md section 2)")
        return
    until = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), dt.UTC)
    days = (until - dt.datetime.now(dt.UTC)).days
    names = ", ".join(v for _, v in cert.get("subjectAltName", ()))
    check.add("superlink", OK, f"{address}: TLS verified by {ca}; certificate for "
              f"{names}, valid until {until:%Y-%m-%d} ({days} days)")
    if days < EXPIRY_WARNING_DAYS:
        check.add("superlink", WARNING, f"the SuperLink's certificate expires in {days} "
                  f"days ({until:%Y-%m-%d}): SuperNodes cannot connect after that; ask "
                  f"the operator to renew it")


def _names_without_hostname_check(context: ssl.SSLContext, host: str, address: str,
                                  timeout: float) -> list[str]:
    """The names the certificate lists (its chain still verified, only the name not)."""
    context.check_hostname = False
    try:
        with socket.create_connection(split_address(address), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            return [v for _, v in tls.getpeercert().get("subjectAltName", ())]
    except (OSError, ssl.SSLError):
        return []
