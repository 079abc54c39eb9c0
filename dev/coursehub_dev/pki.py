"""Certificates and keys for the local control plane: one CA, a serving cert, an admin client cert."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _cert(subject, issuer, public_key, signing_key, *, ca: bool, sans=None, usages=()):
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        b = b.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(signing_key, hashes.SHA256())


def write_pki(directory: Path, extra_ips: tuple[str, ...] = ()) -> dict[str, Path]:
    """Generate everything the control plane needs into `directory`; returns name -> path.

    `extra_ips`: more addresses the API server serves on (real nodes: the host bridge address)."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        p = directory / name
        p.write_bytes(data)
        p.chmod(0o600)
        files[name] = p

    ca_key = _key()
    ca_name = _name("coursehub-devcluster-ca")
    ca = _cert(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
    put("ca.crt", ca.public_bytes(serialization.Encoding.PEM))
    put("ca.key", _pem_key(ca_key))

    serving_key = _key()
    sans: list[x509.GeneralName] = [
        x509.DNSName(n)
        for n in (
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        )
    ]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "10.0.0.1", *extra_ips)]
    serving = _cert(
        _name("kube-apiserver"),
        ca_name,
        serving_key.public_key(),
        ca_key,
        ca=False,
        sans=sans,
        usages=(ExtendedKeyUsageOID.SERVER_AUTH,),
    )
    put("apiserver.crt", serving.public_bytes(serialization.Encoding.PEM))
    put("apiserver.key", _pem_key(serving_key))

    admin_key = _key()
    admin = _cert(
        _name("coursehub-admin", "system:masters"),
        ca_name,
        admin_key.public_key(),
        ca_key,
        ca=False,
        usages=(ExtendedKeyUsageOID.CLIENT_AUTH,),
    )
    put("admin.crt", admin.public_bytes(serialization.Encoding.PEM))
    put("admin.key", _pem_key(admin_key))

    # Service-account tokens are signed with RSA, which every client library verifies.
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    put("sa.key", _pem_key(sa_key))
    put(
        "sa.pub",
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return files


def serving_certificate(dns_names: tuple[str, ...], ca_cn: str = "coursehub-test-ca") -> dict[str, bytes]:
    """A test CA and a server certificate it signs for `dns_names` (PEM): ca.crt, tls.crt, tls.key,
    and spki_sha256 (base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo, the form
    Chromium's --ignore-certificate-errors-spki-list pins)."""
    import base64
    import hashlib

    ca_key = _key()
    ca_name = _name(ca_cn)
    ca = _cert(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
    key = _key()
    leaf = _cert(
        _name(dns_names[0]),
        ca_name,
        key.public_key(),
        ca_key,
        ca=False,
        sans=[x509.DNSName(n) for n in dns_names],
        usages=(ExtendedKeyUsageOID.SERVER_AUTH,),
    )
    spki = leaf.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "tls.crt": leaf.public_bytes(serialization.Encoding.PEM),
        "tls.key": _pem_key(key),
        "spki_sha256": base64.b64encode(hashlib.sha256(spki).digest()),
    }
