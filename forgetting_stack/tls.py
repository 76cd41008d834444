"""The stack's private certificate authority and its one server certificate (``cryptography``).

``up`` makes the CA once (``tls/ca.pem``; its key ``tls/ca.key``, mode 0600, never leaves the
stack's folder) and a server certificate for every name a client may use (the listen address,
127.0.0.1, localhost, this host's names), made again when those names change. Every endpoint
serves it; clients verify against ``ca.pem`` (``client.env`` names it), so a copy of that one
public file is all another host needs besides its credentials."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from pathlib import Path

from .settings import write_private

CA_DAYS, SERVER_DAYS = 3650, 825  # 825: the longest server lifetime clients still accept


def names(host: str) -> list[str]:
    """What a client may call the stack: its address, loopback, and this host's names."""
    out = [host, "127.0.0.1", "localhost", socket.gethostname(), socket.getfqdn()]
    return list(dict.fromkeys(n for n in out if n and n != "0.0.0.0"))


def _san(items: list[str]):
    from cryptography import x509

    alt = []
    for n in items:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(alt)


def _name(common: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "forgetting-pipeline stack"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key) -> None:
    from cryptography.hazmat.primitives import serialization

    write_private(path, key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()).decode())


def _write_cert(path: Path, cert) -> None:
    from cryptography.hazmat.primitives import serialization

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp.replace(path)


def _load(folder: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
    return key, x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())


def ensure(folder: Path, host: str) -> dict[str, Path]:
    """The CA (made once) and a server certificate valid for ``names(host)`` (made again when
    they change or it nears its end); returns the paths ``ca``, ``cert``, ``key``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)  # the certificates are public; the keys are 0600
    paths = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    now = dt.datetime.now(dt.UTC)
    if not (folder / "ca.key").is_file() or not paths["ca"].is_file():
        ca_key = _key()
        subject = _name("forgetting-pipeline stack CA")
        ca = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5))
              .not_valid_after(now + dt.timedelta(days=CA_DAYS))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                           crl_sign=True, content_commitment=False,
                                           key_encipherment=False, data_encipherment=False,
                                           key_agreement=False, encipher_only=False,
                                           decipher_only=False), critical=True)
              .sign(ca_key, hashes.SHA256()))
        _write_key(folder / "ca.key", ca_key)
        _write_cert(paths["ca"], ca)
        paths["cert"].unlink(missing_ok=True)
    ca_key, ca = _load(folder)
    want = names(host)
    if paths["cert"].is_file() and paths["key"].is_file():
        cert = x509.load_pem_x509_certificate(paths["cert"].read_bytes())
        have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if (have == _san(want) and cert.issuer == ca.subject
                and cert.not_valid_after_utc - now > dt.timedelta(days=30)):
            return paths
    key = _key()
    cert = (x509.CertificateBuilder().subject_name(_name(want[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
            .add_extension(_san(want), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_key(paths["key"], key)
    _write_cert(paths["cert"], cert)
    return paths

