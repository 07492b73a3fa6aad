"""Render mosquitto configuration files from the templates shipped beside this module.

``dev.conf`` and ``production.conf`` are real, readable mosquitto configs with ``${name}``
placeholders for what differs per run (port, listen address, data directory, credential files).
Rendering is pure: the launcher decides the values and writes the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template

from mosquitto.creds import Credentials

DEV_TEMPLATE = "dev.conf"
PRODUCTION_TEMPLATE = "production.conf"


class ConfigError(ValueError):
    """A value that cannot go into a mosquitto config (names the setting)."""


@dataclass(frozen=True)
class TlsSettings:
    """The production listener's TLS material and access control.

    ``password_file`` set means password mode; unset means the client certificate's CN is the
    identity (``require_certificate`` + ``use_identity_as_username``).
    """

    cafile: Path
    certfile: Path
    keyfile: Path
    acl_file: Path
    crlfile: Path | None = None
    password_file: Path | None = None

    @classmethod
    def from_credentials(cls, creds: Credentials, password_auth: bool = False) -> TlsSettings:
        if password_auth and creds.passwd is None:
            raise ConfigError(
                f"password mode: {creds.directory} holds no password file; "
                f"create one with `edgeloop creds --out {creds.directory} --password`"
            )
        return cls(
            cafile=creds.ca,
            certfile=creds.server_cert,
            keyfile=creds.server_key,
            acl_file=creds.acl,
            crlfile=None if password_auth else creds.crl,
            password_file=creds.passwd if password_auth else None,
        )


@dataclass(frozen=True)
class BrokerConfig:
    """Everything that varies between two brokers started from the same template."""

    port: int
    bind: str
    data_dir: Path
    log_file: Path
    user: str
    tls: TlsSettings | None = None
    extra_lines: tuple[str, ...] = field(default=())

    @property
    def production(self) -> bool:
        return self.tls is not None


def _path(setting: str, value: Path) -> str:
    text = str(value)
    if not value.is_absolute():
        raise ConfigError(f"{setting}: {text!r} must be an absolute path")
    if "\n" in text or "\r" in text:
        raise ConfigError(f"{setting}: {text!r} contains a line break")
    return text


def _word(setting: str, value: str) -> str:
    if not value or any(c.isspace() for c in value):
        raise ConfigError(f"{setting}: {value!r} must be one word without spaces")
    return value


def render(config: BrokerConfig) -> str:
    """The mosquitto config text for ``config`` (dev or production by ``config.tls``)."""
    if not 0 < config.port < 65536:
        raise ConfigError(f"port: {config.port} is not between 1 and 65535")
    values = {
        "port": str(config.port),
        "bind": _word("bind", config.bind),
        "data_dir": _path("data_dir", config.data_dir),
        "log_file": _path("log_file", config.log_file),
        "user": _word("user", config.user),
    }
    template_name = DEV_TEMPLATE
    if config.tls is not None:
        tls = config.tls
        template_name = PRODUCTION_TEMPLATE
        password_mode = tls.password_file is not None
        values |= {
            "cafile": _path("cafile", tls.cafile),
            "certfile": _path("certfile", tls.certfile),
            "keyfile": _path("keyfile", tls.keyfile),
            "acl_file": _path("acl_file", tls.acl_file),
            "require_certificate": "false" if password_mode else "true",
            "use_identity_as_username": "false" if password_mode else "true",
            "crlfile": (
                f"crlfile {_path('crlfile', tls.crlfile)}"
                if tls.crlfile is not None
                else "# crlfile: not used"
            ),
            "password_file": (
                f"password_file {_path('password_file', tls.password_file)}"
                if tls.password_file is not None
                else "# password_file: not used, identities are client certificates"
            ),
        }
    template = Template(resources.files("mosquitto").joinpath(template_name).read_text())
    text = template.substitute(values)
    for line in config.extra_lines:
        if "\n" in line:
            raise ConfigError(f"extra config line {line!r} contains a line break")
    if config.extra_lines:
        text += "\n" + "\n".join(config.extra_lines) + "\n"
    return text


def setting(text: str, name: str) -> list[str]:
    """Every value given to ``name`` in a rendered config (for checks and tests)."""
    values = []
    for line in text.splitlines():
        parts = line.split(None, 1)
        if parts and parts[0] == name:
            values.append(parts[1].strip() if len(parts) > 1 else "")
    return values
