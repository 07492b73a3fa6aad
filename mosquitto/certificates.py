"""X.509 for the broker: a private CA, server and client certificates, the revocation list.

Pure functions over ``cryptography`` objects; reading and writing the files is
:mod:`mosquitto.creds`' job. Keys are EC P-256: small, fast to make, accepted by mosquitto's
OpenSSL and by Python's ``ssl``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=825)
#: A certificate closer than this to its end is reissued by the next `edgeloop creds` run.
RENEW_BEFORE = dt.timedelta(days=30)
#: Issued certificates start a little in the past to tolerate clocks that are slightly behind.
_BACKDATE = dt.timedelta(minutes=5)

PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Revocation:
    serial: int
    revoked_at: dt.datetime


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM: mosquitto and the clients load keys unattended."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_key_pem(data: bytes) -> PrivateKey:
    """Raise ``ValueError`` unless ``data`` is an unencrypted PEM EC private key."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # encrypted
        raise ValueError(str(exc)) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"expected an EC private key, got {type(key).__name__}")
    return key


def load_cert_pem(data: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data)


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise ValueError("certificate has no common name (CN)")
    return str(names[0].value)


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgeloop"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _key_usage(*, sign_certs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not sign_certs,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not sign_certs,
        key_cert_sign=sign_certs,
        crl_sign=sign_certs,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(key: PrivateKey) -> x509.Certificate:
    """A self-signed CA that can sign leaf certificates only (path length 0).

    Its CN carries a random suffix so that two installations' CAs are told apart in logs.
    """
    name = _name(f"edgeloop CA {secrets.token_hex(4)}")
    start = now()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _BACKDATE)
        .not_valid_after(start + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(sign_certs=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address(n)) if _is_ip(n) else x509.DNSName(n) for n in names]
    )


def issue(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    key: PrivateKey,
    name: str,
    server_names: Sequence[str] = (),
) -> x509.Certificate:
    """A leaf certificate with CN ``name``: for a server when ``server_names`` (its SAN) is
    given, else for a client, whose CN the broker takes as its identity."""
    start = now()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _BACKDATE)
        .not_valid_after(min(start + LEAF_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(sign_certs=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server_names:
        builder = builder.add_extension(_san(server_names), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def san_names(cert: x509.Certificate) -> set[str]:
    """DNS names and IP addresses (as text) in the certificate's SAN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = {str(n) for n in san.get_values_for_type(x509.DNSName)}
    return names | {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def still_good(
    cert: x509.Certificate, ca_cert: x509.Certificate, server_names: Sequence[str] = ()
) -> bool:
    """Whether ``cert`` can stay: signed by ``ca_cert``, not due for renewal, and (for the
    server) naming every host in ``server_names``."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if cert.not_valid_after_utc - now() < RENEW_BEFORE:
        return False
    wanted = {str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in server_names}
    return wanted <= san_names(cert)


def build_crl(
    ca_cert: x509.Certificate, ca_key: PrivateKey, revoked: Iterable[Revocation]
) -> x509.CertificateRevocationList:
    # OpenSSL refuses every client once a CRL's next update has passed: keep it as long as the CA.
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now() - _BACKDATE)
        .next_update(ca_cert.not_valid_after_utc)
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
            .build()
        )
    return builder.sign(ca_key, hashes.SHA256())
