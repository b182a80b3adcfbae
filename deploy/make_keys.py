"""Make the keys and certificates of an mmvm federation.

Usage (all-in-one, for a test bed or one trusted administrator)::

    python -m deploy.make_keys --out keys --sites a,b,c --hosts superlink.example.org

writes::

    keys/ca.crt  ca.key               CA (EC P-384, 10 years); ca.key stays offline
    keys/server.pem  server.key       SuperLink TLS certificate, signed by the CA
    keys/public_keys.json             all sites' mmvm public keys (the directory)
    keys/sites/<site>/<site>          SuperNode auth key, EC P-384, OpenSSH private
    keys/sites/<site>/<site>.pub      its public half, for `flwr supernode register`
    keys/sites/<site>/site_keys.json  the site's mmvm keys (X25519 + Ed25519), private
    keys/sites/<site>/site_public.json  their public record
    keys/sites/<site>/ca.crt          copy, for --root-certificates

In production each party makes only its own secrets:

* operator: ``--pki-only`` (CA and server certificate);
* each site: ``--site NAME`` (its auth key and mmvm keys), then sends only
  ``NAME.pub`` and ``site_public.json`` (reading out the printed fingerprint);
* operator or any site: ``--directory site_public.json ...`` assembles
  ``public_keys.json``, which every site checks against the fingerprints.

Private keys are written 0600, atomically; nothing is overwritten without
``--force`` (all targets are checked before anything is written).
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import re
import sys
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mmvm.atomic import atomic_write
from mmvm.secure.keys import (
    SiteKeys,
    SitePublicKeys,
    public_directory_bytes,
    validate_site_name,
)

CA_DAYS = 3650
SERVER_DAYS = 825  # the CA/Browser Forum's old maximum; renew yearly
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
_PEM = serialization.Encoding.PEM
_PKCS8 = serialization.PrivateFormat.PKCS8
_NOENC = serialization.NoEncryption()

Files = dict[Path, tuple[bytes, int]]  # path -> (content, mode)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(_PEM, _PKCS8, _NOENC)


def make_ca(
    common_name: str = "mmvm federation CA",
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Self-signed CA certificate (basicConstraints CA, path length 0)."""
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                key_cert_sign=True, crl_sign=True, encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA384())
    )
    return cert, key


# a DNS name's label (RFC 1123): letters, digits and inner hyphens, at most 63 long
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_host(host: str) -> str:
    """``host`` if it is an IP address or a DNS name a certificate can hold.

    A TLS client matches the name it dialled against the SAN, so a typo here
    (``superlink example.org``) makes a certificate no SuperNode accepts; a wildcard
    is allowed as the leftmost label only, as RFC 6125 says.
    """
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if labels and labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"--hosts: {host!r} is neither an IP address nor a DNS name "
                         f"(letters, digits, hyphens and dots; '*.' only in front); "
                         f"give the names SuperNodes dial, comma-separated")
    return host


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):  # keep order, drop duplicates
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_server_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    hosts: Sequence[str],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """SuperLink certificate: SAN = ``hosts``, EKU serverAuth, signed by the CA."""
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=SERVER_DAYS))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=True,
                key_cert_sign=False, crl_sign=False, encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    return cert, key


def supernode_auth_key(site: str) -> tuple[bytes, bytes]:
    """SuperNode authentication key pair: EC P-384, OpenSSH private and public."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(_PEM, serialization.PrivateFormat.OpenSSH, _NOENC)
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + f" mmvm-site-{site}\n".encode()


def pki_files(out: Path, hosts: Sequence[str]) -> Files:
    ca_cert, ca_key = make_ca()
    srv_cert, srv_key = make_server_cert(ca_cert, ca_key, hosts)
    return {
        out / "ca.crt": (ca_cert.public_bytes(_PEM), 0o644),
        out / "ca.key": (_key_pem(ca_key), 0o600),
        out / "server.pem": (srv_cert.public_bytes(_PEM), 0o644),
        out / "server.key": (_key_pem(srv_key), 0o600),
    }


# the files a site's folder holds besides its auth key, which is named after the site
SITE_FOLDER_FILES = ("ca.crt", "site_keys.json", "site_public.json", "public_keys.json")


def site_files(site_dir: Path, site: str) -> tuple[Files, SitePublicKeys]:
    validate_site_name(site)
    if site.lower() in SITE_FOLDER_FILES:  # its private key would be written over by
        # that file (on a case-insensitive disk, macOS's or Windows', by CA.crt as well)
        raise ValueError(f"site name {site!r} is the name of a file its folder holds "
                         f"({', '.join(SITE_FOLDER_FILES)}); choose another name")
    private, public = supernode_auth_key(site)
    keys = SiteKeys.generate(site)
    files: Files = {
        site_dir / site: (private, 0o600),
        site_dir / f"{site}.pub": (public, 0o644),
        site_dir / "site_keys.json": (
            json.dumps(keys.to_dict(), indent=1, sort_keys=True).encode() + b"\n",
            0o600,
        ),
        site_dir / "site_public.json": (keys.public.to_bytes() + b"\n", 0o644),
    }
    return files, keys.public


def write_all(files: Files, *, force: bool) -> None:
    """Check every target first, then write each atomically with its mode."""
    if not force:
        existing = sorted(str(p) for p in files if p.exists())
        if existing:
            raise FileExistsError(
                "refusing to overwrite (use --force): " + ", ".join(existing)
            )
    for path, (data, mode) in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data, mode=mode, overwrite=force)


def parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The options (also ``mmvm site keys``'s, which takes them as a parent)."""
    p = argparse.ArgumentParser(
        prog="python -m deploy.make_keys",
        description=__doc__.split("\n\n")[0],
        epilog="See deploy/README.md for the full procedure.",
        add_help=add_help,
    )
    p.add_argument("--out", required=True, type=Path, help="output directory")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--sites", help="comma-separated site names: make everything for all of them"
    )
    mode.add_argument("--site", help="make only this site's keys (run at the site)")
    mode.add_argument(
        "--pki-only", action="store_true", help="make only the CA and server cert"
    )
    mode.add_argument(
        "--directory", nargs="+", type=Path, metavar="SITE_PUBLIC_JSON",
        help="assemble public_keys.json from sites' site_public.json files",
    )
    p.add_argument(
        "--hosts", default="",
        help="extra SuperLink host names / IPs for the server certificate SAN "
        "(localhost and 127.0.0.1 are always included), comma-separated",
    )
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    try:
        return make(parser().parse_args(argv))
    except (OSError, ValueError) as err:  # e.g. an --out under a file, a refused name
        print(f"make_keys: error: {err}", file=sys.stderr)
        return 2


def make(args: argparse.Namespace) -> int:
    """Write what ``args`` (:func:`parser`'s) asks for; the exit status."""
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder (made if missing)")
    extra = [check_host(h.strip()) for h in args.hosts.split(",") if h.strip()]
    hosts = list(DEFAULT_HOSTS) + extra
    files: Files = {}
    publics: list[SitePublicKeys] = []
    if args.directory:
        publics = [_public_record(p) for p in args.directory]
    elif args.site:
        f, pub = site_files(out, args.site)
        files.update(f)
        write_all(files, force=args.force)
        print(f"site {pub.site}: fingerprint {pub.fingerprint}")
        print(f"send {out / (args.site + '.pub')} and {out / 'site_public.json'}")
        return 0
    elif args.pki_only or args.sites:
        files.update(pki_files(out, hosts))
        sites = [s.strip() for s in (args.sites or "").split(",") if s.strip()]
        if args.sites is not None and not sites:  # "," made the PKI alone, unsaid
            raise ValueError(f"--sites {args.sites!r} names no site; give their names, "
                             f"comma-separated, or --pki-only")
        again = sorted({s for s in sites if sites.count(s) > 1})
        if again:
            raise ValueError(f"--sites: {', '.join(again)} given twice; name each site once")
        folded = [s.casefold() for s in sites]
        twice = sorted({s for s in sites if folded.count(s.casefold()) > 1})
        if twice:  # `A` and `a` are one folder on macOS's and Windows' disks
            raise ValueError(f"--sites: {', '.join(twice)} name one site folder on a "
                             f"case-insensitive disk; name each site once, told apart by "
                             f"more than case")
        for site in sites:
            f, pub = site_files(out / "sites" / site, site)
            files.update(f)
            files[out / "sites" / site / "ca.crt"] = files[out / "ca.crt"]
            publics.append(pub)
    else:
        raise SystemExit("give one of --sites, --site, --pki-only, --directory")
    if publics:
        directory = (public_directory_bytes(publics), 0o644)
        files[out / "public_keys.json"] = directory
        if args.sites:
            for pub in publics:
                files[out / "sites" / pub.site / "public_keys.json"] = directory
    write_all(files, force=args.force)
    for pub in publics:
        print(f"site {pub.site}: fingerprint {pub.fingerprint}")
    print(f"wrote {len(files)} file{'s' * (len(files) != 1)} under {out}")
    return 0


def _public_record(path: Path) -> SitePublicKeys:
    """A site's ``site_public.json``, or an error that names the file."""
    try:
        return SitePublicKeys.from_bytes(path.read_bytes())
    except OSError as err:
        raise ValueError(f"--directory {path}: {err.strerror or err}") from None
    except ValueError as err:
        raise ValueError(f"--directory {path}: {err} (a site's site_public.json, as "
                         f"`mmvm site keys --site` wrote it)") from None


if __name__ == "__main__":
    sys.exit(main())
