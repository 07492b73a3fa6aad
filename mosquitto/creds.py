"""Credentials for the production broker, kept in one directory on the cloud host.

What ``generate_credentials`` maintains in ``out_dir``::

    ca.crt  ca.key            the private CA every certificate below is signed by
    server.crt  server.key    the broker (SAN: localhost, 127.0.0.1, ::1 and any --server-name)
    acl                       generated from protocol/topics.py (see mosquitto/acl.py)
    crl.pem                   revoked client certificates
    passwd                    mosquitto password file (password mode only)
    identities/<name>/        one bundle per identity, the directory to copy onto that machine:
        ca.crt  client.crt  client.key  [password]
    edgeloop-creds.json       which identity is the cloud, the nodes, revocations

Reruns are idempotent: the CA is kept, new nodes are added, certificates are reissued only when
missing, no longer valid for a month, or not signed by this CA. Private keys and passwords are
written with mode 0600. Keys are unencrypted PEM because mosquitto and the clients load them
unattended; protect the directory instead.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from pydantic import BaseModel, ValidationError

from mosquitto import certificates as certs
from mosquitto.acl import build_acl
from mosquitto.passwords import (
    format_passwd,
    hash_password,
    new_password,
    parse_passwd,
    verify_password,
)
from protocol.errors import ProtocolError
from protocol.topics import check_name

__all__ = [
    "ClientCredentials",
    "Credentials",
    "CredentialsError",
    "build_acl",
    "generate_credentials",
    "load_credentials",
    "revoke_identity",
]

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
ACL_FILE = "acl"
CRL_FILE = "crl.pem"
PASSWD_FILE = "passwd"
MANIFEST_FILE = "edgeloop-creds.json"
IDENTITIES_DIR = "identities"
BUNDLE_CA = "ca.crt"
BUNDLE_CERT = "client.crt"
BUNDLE_KEY = "client.key"
BUNDLE_PASSWORD = "password"

DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1", "::1")


class CredentialsError(ValueError):
    """Credentials that cannot be generated or loaded; the message names the file or name."""


@dataclass(frozen=True)
class ClientCredentials:
    """What one client needs to connect to the production broker.

    ``username`` is the identity the broker's ACL sees: the certificate CN, which equals
    ``name``. ``password`` is set only in password mode.
    """

    name: str
    cert: Path
    key: Path
    username: str
    password: str | None = None
    ca: Path | None = None

    @classmethod
    def load(cls, directory: Path) -> ClientCredentials:
        """Read an identity bundle (``identities/<name>/`` copied onto a machine)."""
        directory = Path(directory)
        cert_path = directory / BUNDLE_CERT
        key_path = directory / BUNDLE_KEY
        for path in (cert_path, key_path, directory / BUNDLE_CA):
            if not path.is_file():
                raise CredentialsError(f"identity bundle {directory}: {path.name} is missing")
        name = _common_name(cert_path)
        password_path = directory / BUNDLE_PASSWORD
        password = password_path.read_text().strip() if password_path.is_file() else None
        return cls(
            name=name,
            cert=cert_path,
            key=key_path,
            username=name,
            password=password,
            ca=directory / BUNDLE_CA,
        )


@dataclass(frozen=True)
class Credentials:
    """Paths of everything in a credentials directory; see the module docstring."""

    directory: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    acl: Path
    crl: Path
    passwd: Path | None
    cloud: str
    clients: Mapping[str, ClientCredentials]

    @property
    def nodes(self) -> list[str]:
        return sorted(name for name in self.clients if name != self.cloud)

    def client(self, name: str) -> ClientCredentials:
        try:
            return self.clients[name]
        except KeyError:
            known = ", ".join(sorted(self.clients)) or "none"
            raise CredentialsError(
                f"identity {name!r}: not in {self.directory} (known: {known})"
            ) from None


class _Revoked(BaseModel):
    name: str
    serial: int
    revoked_at: dt.datetime


class _Manifest(BaseModel):
    """``edgeloop-creds.json``: the roles, which certificates alone cannot tell."""

    cloud: str
    nodes: list[str] = []
    server_names: list[str] = []
    revoked: list[_Revoked] = []


# --- files ---------------------------------------------------------------------------------


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a key or CA."""
    if isinstance(data, str):
        data = data.encode()
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _write_private(path: Path, data: bytes | str) -> None:
    _write(path, data, 0o600)


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return certs.load_cert_pem(path.read_bytes())
    except ValueError as exc:
        raise CredentialsError(f"{path}: not a PEM certificate ({exc})") from None


def _load_key(path: Path) -> certs.PrivateKey:
    try:
        return certs.load_key_pem(path.read_bytes())
    except ValueError as exc:
        raise CredentialsError(f"{path}: not an unencrypted PEM EC private key ({exc})") from None


def _common_name(path: Path) -> str:
    try:
        return certs.common_name(_load_cert(path))
    except ValueError as exc:
        raise CredentialsError(f"{path}: {exc}") from None


def _ensure_key_and_cert(
    key_path: Path,
    cert_path: Path,
    ca_cert: x509.Certificate,
    ca_key: certs.PrivateKey,
    name: str,
    server_names: Sequence[str] = (),
) -> None:
    """Keep a key and certificate that are still good; otherwise (re)issue the certificate,
    keeping the key when there is one."""
    if (
        key_path.is_file()
        and cert_path.is_file()
        and certs.still_good(_load_cert(cert_path), ca_cert, server_names)
    ):
        return
    if key_path.is_file():
        key = _load_key(key_path)
    else:
        key = certs.new_key()
        _write_private(key_path, certs.key_pem(key))
    _write(cert_path, certs.cert_pem(certs.issue(ca_cert, ca_key, key, name, server_names)))


def _ensure_ca(directory: Path) -> tuple[x509.Certificate, certs.PrivateKey]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if cert_path.is_file() != key_path.is_file():
        missing = key_path if cert_path.is_file() else cert_path
        raise CredentialsError(
            f"{missing} is missing while its pair exists; restore it from a backup "
            f"(a new CA would invalidate every certificate already installed on the nodes)"
        )
    if cert_path.is_file():
        return _load_cert(cert_path), _load_key(key_path)
    key = certs.new_key()
    cert = certs.make_ca(key)
    _write_private(key_path, certs.key_pem(key))
    _write(cert_path, certs.cert_pem(cert))
    return cert, key


def _write_crl(
    path: Path, ca_cert: x509.Certificate, ca_key: certs.PrivateKey, revoked: Sequence[_Revoked]
) -> None:
    entries = [certs.Revocation(r.serial, r.revoked_at) for r in revoked]
    crl = certs.build_crl(ca_cert, ca_key, entries)
    _write(path, certs.cert_pem(crl))


# --- the directory -------------------------------------------------------------------------


def _read_manifest(directory: Path) -> _Manifest | None:
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return _Manifest.model_validate_json(path.read_text())
    except ValidationError as exc:
        raise CredentialsError(f"{path}: not a valid credentials manifest ({exc})") from None


def _write_manifest(directory: Path, manifest: _Manifest) -> None:
    _write(directory / MANIFEST_FILE, manifest.model_dump_json(indent=2) + "\n")


def _checked(name: str, what: str) -> str:
    try:
        return check_name(name, what)
    except ProtocolError as exc:
        raise CredentialsError(str(exc)) from None


def _ensure_bundle(
    directory: Path,
    name: str,
    ca_cert: x509.Certificate,
    ca_key: certs.PrivateKey,
    password: bool,
) -> None:
    bundle = directory / IDENTITIES_DIR / name
    bundle.mkdir(parents=True, exist_ok=True, mode=0o700)
    _ensure_key_and_cert(bundle / BUNDLE_KEY, bundle / BUNDLE_CERT, ca_cert, ca_key, name)
    ca_pem = certs.cert_pem(ca_cert)
    ca_copy = bundle / BUNDLE_CA
    if not ca_copy.is_file() or ca_copy.read_bytes() != ca_pem:
        _write(ca_copy, ca_pem)
    password_path = bundle / BUNDLE_PASSWORD
    if password and not password_path.is_file():
        _write_private(password_path, new_password() + "\n")


def _sync_passwd(directory: Path, names: Sequence[str]) -> Path | None:
    """Rewrite ``passwd`` from the bundles' passwords, keeping hashes that still match."""
    path = directory / PASSWD_FILE
    current = parse_passwd(path.read_text()) if path.is_file() else {}
    entries: dict[str, str] = {}
    for name in sorted(names):
        password_path = directory / IDENTITIES_DIR / name / BUNDLE_PASSWORD
        if not password_path.is_file():
            continue
        password = password_path.read_text().strip()
        old = current.get(name)
        entries[name] = old if old and verify_password(password, old) else hash_password(password)
    if not entries and not path.exists():
        return None
    text = format_passwd(entries)
    if not path.is_file() or path.read_text() != text:
        _write_private(path, text)
    return path


def generate_credentials(
    out_dir: Path,
    nodes: Sequence[str],
    cloud: str = "cloud",
    passwords: bool = False,
    server_names: Sequence[str] = (),
) -> Credentials:
    """Create or extend the credentials in ``out_dir`` for ``nodes`` and the ``cloud`` identity.

    ``passwords`` gives every identity that lacks one a random password (password mode).
    ``server_names`` adds host names or IP addresses the broker is reached by to the server
    certificate, beside localhost/127.0.0.1/::1.
    """
    out_dir = Path(out_dir).absolute()
    cloud = _checked(cloud, "cloud identity")
    node_names = [_checked(n, "node") for n in nodes]
    if cloud in node_names:
        raise CredentialsError(f"node {cloud!r}: that name is the cloud identity")
    extra_hosts = [h.strip() for h in server_names if h.strip()]
    for host in extra_hosts:
        if any(c.isspace() or c in "/,\n" for c in host):
            raise CredentialsError(f"server name {host!r}: not a host name or IP address")

    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    manifest = _read_manifest(out_dir)
    if manifest is None:
        manifest = _Manifest(cloud=cloud)
    elif manifest.cloud != cloud:
        raise CredentialsError(
            f"{out_dir / MANIFEST_FILE}: these credentials belong to cloud identity "
            f"{manifest.cloud!r}, not {cloud!r} (pass --cloud-name {manifest.cloud})"
        )
    if cloud in manifest.nodes:
        raise CredentialsError(f"cloud identity {cloud!r}: already a node in {out_dir}")
    all_nodes = sorted(set(manifest.nodes) | set(node_names))
    hosts = list(DEFAULT_SERVER_NAMES)
    for host in [*manifest.server_names, *extra_hosts]:
        if host not in hosts:
            hosts.append(host)

    ca_cert, ca_key = _ensure_ca(out_dir)
    _ensure_key_and_cert(
        out_dir / SERVER_KEY, out_dir / SERVER_CERT, ca_cert, ca_key, hosts[0], hosts
    )
    identities = [cloud, *all_nodes]
    for name in identities:
        _ensure_bundle(out_dir, name, ca_cert, ca_key, passwords)
    acl_text = build_acl(cloud)
    acl_path = out_dir / ACL_FILE
    if not acl_path.is_file() or acl_path.read_text() != acl_text:
        _write(acl_path, acl_text)
    _write_crl(out_dir / CRL_FILE, ca_cert, ca_key, manifest.revoked)
    _sync_passwd(out_dir, identities)
    _write_manifest(
        out_dir,
        manifest.model_copy(
            update={
                "nodes": all_nodes,
                "server_names": [h for h in hosts if h not in DEFAULT_SERVER_NAMES],
            }
        ),
    )
    return load_credentials(out_dir)


def load_credentials(out_dir: Path) -> Credentials:
    """The :class:`Credentials` of a directory made by :func:`generate_credentials`."""
    out_dir = Path(out_dir).absolute()
    manifest = _read_manifest(out_dir)
    if manifest is None:
        raise CredentialsError(
            f"{out_dir}: no credentials here ({MANIFEST_FILE} missing); "
            f"create them with `edgeloop creds --out {out_dir} --node NAME`"
        )
    for required in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, ACL_FILE, CRL_FILE):
        if not (out_dir / required).is_file():
            raise CredentialsError(f"{out_dir / required}: missing; rerun `edgeloop creds`")
    clients = {
        name: ClientCredentials.load(out_dir / IDENTITIES_DIR / name)
        for name in [manifest.cloud, *manifest.nodes]
    }
    passwd = out_dir / PASSWD_FILE
    return Credentials(
        directory=out_dir,
        ca=out_dir / CA_CERT,
        ca_key=out_dir / CA_KEY,
        server_cert=out_dir / SERVER_CERT,
        server_key=out_dir / SERVER_KEY,
        acl=out_dir / ACL_FILE,
        crl=out_dir / CRL_FILE,
        passwd=passwd if passwd.is_file() else None,
        cloud=manifest.cloud,
        clients=clients,
    )


def revoke_identity(out_dir: Path, name: str) -> Credentials:
    """Withdraw a node: its certificate goes on the CRL, its password and bundle are deleted.

    The broker reads the CRL and password file when it starts: restart it afterwards. A node of
    the same name can be added again later; it gets a new key and certificate.
    """
    out_dir = Path(out_dir).absolute()
    creds = load_credentials(out_dir)
    manifest = _read_manifest(out_dir)
    assert manifest is not None  # load_credentials checked it
    if name == creds.cloud:
        raise CredentialsError(
            f"identity {name!r}: the cloud identity cannot be revoked; create a new directory"
        )
    if name not in manifest.nodes:
        known = ", ".join(manifest.nodes) or "none"
        raise CredentialsError(f"node {name!r}: not in {out_dir} (nodes: {known})")
    ca_cert, ca_key = _ensure_ca(out_dir)
    cert = _load_cert(creds.client(name).cert)
    revoked = [
        *manifest.revoked,
        _Revoked(name=name, serial=cert.serial_number, revoked_at=certs.now()),
    ]
    _write_crl(out_dir / CRL_FILE, ca_cert, ca_key, revoked)
    shutil.rmtree(out_dir / IDENTITIES_DIR / name)
    remaining = [n for n in manifest.nodes if n != name]
    _sync_passwd(out_dir, [manifest.cloud, *remaining])
    _write_manifest(out_dir, manifest.model_copy(update={"nodes": remaining, "revoked": revoked}))
    return load_credentials(out_dir)
