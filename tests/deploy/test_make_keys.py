"""deploy.make_keys: certificate chain, SAN/EKU, key formats, file modes."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store

from deploy import make_keys
from mmvm.secure.keys import SiteKeys, SitePublicKeys, load_public_directory

SITES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("keys")
    rc = make_keys.main(["--out", str(out), "--sites", ",".join(SITES),
                         "--hosts", "superlink.example.org,10.0.0.5"])
    assert rc == 0
    return out


def _cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_certificate(out):
    ca = _cert(out / "ca.crt")
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), None)
    assert key.public_key().public_numbers() == ca.public_key().public_numbers()


def test_server_certificate_chain(out):
    ca, srv = _cert(out / "ca.crt"), _cert(out / "server.pem")
    assert srv.issuer == ca.subject
    srv.verify_directly_issued_by(ca)  # signature by the CA key
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {
        "localhost", "superlink.example.org"}
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.0.0.5")}
    eku = srv.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not srv.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    now = dt.datetime.now(dt.timezone.utc)
    assert srv.not_valid_before_utc <= now < srv.not_valid_after_utc
    assert srv.not_valid_after_utc - now > dt.timedelta(days=365)
    # what a TLS client does: path validation for each name in the SAN
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier
    loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    for name in (x509.DNSName("localhost"), loopback):
        chain = verifier(name).verify(srv, [])
        assert chain[-1] == ca
    key = serialization.load_pem_private_key((out / "server.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == srv.public_key().public_numbers()


def test_site_key_formats(out):
    directory = load_public_directory(out / "public_keys.json")
    assert sorted(directory) == SITES
    for site in SITES:
        d = out / "sites" / site
        private = serialization.load_ssh_private_key((d / site).read_bytes(), None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.curve.name == "secp384r1"
        header = b"-----BEGIN OPENSSH PRIVATE KEY-----"
        assert (d / site).read_bytes().startswith(header)
        pub_text = (d / f"{site}.pub").read_text()
        assert pub_text.startswith("ecdsa-sha2-nistp384 ")
        public = serialization.load_ssh_public_key(pub_text.encode())
        assert public.public_numbers() == private.public_key().public_numbers()
        keys = SiteKeys.load(d / "site_keys.json")
        assert keys.public == directory[site]
        record = (d / "site_public.json").read_bytes()
        assert SitePublicKeys.from_bytes(record) == keys.public
        assert (d / "ca.crt").read_bytes() == (out / "ca.crt").read_bytes()
        assert load_public_directory(d / "public_keys.json") == directory


def test_private_files_are_0600(out):
    private = [out / "ca.key", out / "server.key"]
    for site in SITES:
        private += [out / "sites" / site / site,
                    out / "sites" / site / "site_keys.json"]
    for path in private:
        assert os.stat(path).st_mode & 0o777 == 0o600, path
    assert os.stat(out / "server.pem").st_mode & 0o777 == 0o644
    assert not list(out.rglob("*.tmp"))


def test_refuses_to_overwrite_unless_forced(out, capsys):
    before = (out / "ca.key").read_bytes()
    assert make_keys.main(["--out", str(out), "--sites", "a"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (out / "ca.key").read_bytes() == before


@pytest.mark.parametrize("name", make_keys.SITE_FOLDER_FILES)
def test_a_site_named_like_a_file_of_its_folder_is_refused(tmp_path, capsys, name):
    """Its private key (named after the site) would be written over by that file, and
    the operator would register a key the site no longer has."""
    assert make_keys.main(["--out", str(tmp_path / "k"), "--sites", f"{name},b"]) == 2
    assert f"site name {name!r} is the name of a file its folder holds" in \
        capsys.readouterr().err
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize("sites, match", [
    ("CA.crt,b", "site name 'CA.crt' is the name of a file its folder holds"),
    ("Site-A,site-a,b", "Site-A, site-a name one site folder on a case-insensitive disk"),
    ("a,a", "--sites: a given twice; name each site once"),
    (",", "--sites ',' names no site"),  # made the PKI alone, unsaid
])
def test_names_that_one_case_insensitive_disk_confuses_are_refused(tmp_path, capsys,
                                                                   sites, match):
    """On macOS's and Windows' disks `Site-A` and `site-a` are one folder, and a site
    `CA.crt`'s key is the file ca.crt: one site's keys would replace another's."""
    assert make_keys.main(["--out", str(tmp_path / "k"), "--sites", sites]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "k").exists()


def test_an_out_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert make_keys.main(["--out", str(tmp_path / "afile" / "k"), "--site", "a"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("make_keys: error: ") and err.count("\n") == 1


def test_an_out_that_is_a_file_is_named(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert make_keys.main(["--out", str(tmp_path / "afile"), "--pki-only"]) == 2
    assert f"--out {tmp_path / 'afile'} is a file; give a folder" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("host", ["bad host!", "superlink example.org", "-a.org",
                                  "a..org", "x" * 64 + ".org", "a.*.org", "*"])
def test_a_host_no_certificate_can_name_is_refused(tmp_path, capsys, host):
    """A SuperNode matches the name it dials against the SAN: a typo made a
    certificate nobody could use, found only at the first connection."""
    assert make_keys.main(["--out", str(tmp_path / "k"), "--pki-only",
                           "--hosts", f"ok.org,{host}"]) == 2
    assert f"--hosts: {host!r} is neither an IP address nor a DNS name" in \
        capsys.readouterr().err
    assert not (tmp_path / "k").exists()


def test_wildcards_ipv6_and_trailing_dots_are_hosts(tmp_path):
    hosts = ["*.example.org", "::1", "link.example.org.", "xn--bcher-kva.example"]
    assert make_keys.main(["--out", str(tmp_path / "k"), "--pki-only",
                           "--hosts", ",".join(hosts)]) == 0
    san = _cert(tmp_path / "k" / "server.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "*.example.org" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("::1") in san.get_values_for_type(x509.IPAddress)


def test_force_and_per_party_modes(tmp_path):
    out = tmp_path / "k"
    assert make_keys.main(["--out", str(out), "--pki-only"]) == 0
    first = (out / "ca.key").read_bytes()
    assert make_keys.main(["--out", str(out), "--pki-only", "--force"]) == 0
    assert (out / "ca.key").read_bytes() != first
    for site in ("x", "y"):  # each site makes its own keys
        assert make_keys.main(["--out", str(tmp_path / site), "--site", site]) == 0
    assert make_keys.main(["--out", str(out), "--directory",
                           str(tmp_path / "x" / "site_public.json"),
                           str(tmp_path / "y" / "site_public.json")]) == 0
    doc = json.loads((out / "public_keys.json").read_text())
    assert sorted(doc["sites"]) == ["x", "y"]
    assert make_keys.main(["--out", str(tmp_path / "z"), "--site", "bad name"]) == 2


def test_cli_help():
    res = subprocess.run([sys.executable, "-m", "deploy.make_keys", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--sites" in res.stdout and "--force" in res.stdout


def test_mmvm_site_keys_is_the_same_command(tmp_path, capsys):
    """An administrator looks under `mmvm site` for the keys (a walkthrough found them
    only in deploy/README.md): the same options, files and fingerprint."""
    from mmvm.cli import main

    assert main(["site", "keys", "--out", str(tmp_path / "k"), "--site", "site-b"]) == 0
    said = capsys.readouterr().out
    pub = json.loads((tmp_path / "k" / "site_public.json").read_text())
    assert (tmp_path / "k" / "site_keys.json").stat().st_mode & 0o777 == 0o600
    fingerprint = SitePublicKeys.from_bytes(json.dumps(pub).encode()).fingerprint
    assert f"site site-b: fingerprint {fingerprint}" in said
    assert main(["site", "keys", "--out", str(tmp_path / "k"), "--site", "site-b"]) == 2
    assert "refusing to overwrite (use --force)" in capsys.readouterr().err
