"""Test helpers for the serving tests: hashed API-key files and TLS certificates made on the spot."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path


def write_keys(path: Path, keys: dict[str, tuple[str, str]]) -> Path:
    """A key file in the server's format: ``{name: (plain key, scopes)}`` -> one ``name scopes sha256:<hex>``
    line each (the plain keys stay with the test)."""
    from serve.auth import hash_key

    path.write_text("# test keys\n" + "".join(f"{name} {scopes} {hash_key(key)}\n"
                                               for name, (key, scopes) in keys.items()))
    return path


def _name(cn: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(dir_: Path, stem: str, cert, key) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = dir_ / f"{stem}.crt", dir_ / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def make_cert(dir_: Path, stem: str, cn: str, issuer: tuple | None = None, ca: bool = False,
              server: bool = False) -> tuple[Path, Path, object, object]:
    """A certificate (self-signed, or signed by ``issuer`` = (cert, key)) and its EC key, written as PEM files
    ``stem.crt``/``stem.key``; a server certificate names 127.0.0.1 and localhost. Returns (crt, key, cert obj,
    key obj)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (x509.CertificateBuilder().subject_name(_name(cn))
               .issuer_name(issuer_cert.subject if issuer_cert is not None else _name(cn))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    crt_path, key_path = _write(dir_, stem, cert, key)
    return crt_path, key_path, cert, key


def make_pki(dir_: Path) -> dict[str, Path]:
    """A self-signed server certificate, a client CA, a client certificate it signed, and a stranger's
    self-signed client certificate: ``{"server_crt", "server_key", "client_ca", "client_crt", "client_key",
    "stranger_crt", "stranger_key"}``."""
    dir_.mkdir(parents=True, exist_ok=True)
    server_crt, server_key, _, _ = make_cert(dir_, "server", "prefmine-test-server", server=True)
    ca_crt, _, ca_cert, ca_key = make_cert(dir_, "client-ca", "prefmine-test-client-ca", ca=True)
    client_crt, client_key, _, _ = make_cert(dir_, "client", "shop-web", issuer=(ca_cert, ca_key))
    stranger_crt, stranger_key, _, _ = make_cert(dir_, "stranger", "stranger")
    return {"server_crt": server_crt, "server_key": server_key, "client_ca": ca_crt, "client_crt": client_crt,
            "client_key": client_key, "stranger_crt": stranger_crt, "stranger_key": stranger_key}
