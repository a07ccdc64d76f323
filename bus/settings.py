"""The one settings object (DESIGN §10): a TOML file, ``DOCBUS_*`` variables, defaults.

Precedence: command-line options > ``DOCBUS_*`` variables > the TOML file (``--config
FILE`` or ``DOCBUS_CONFIG``) > defaults. A bad value raises :class:`SettingsError` naming
the variable (or file key) and what it expects; secrets stay out of ``repr``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bus.wire.errors import Misconfigured
from bus.wire.limits import BLOB_THRESHOLD, MAX_RECORD_BYTES

ENV_PREFIX = "DOCBUS_"
CONFIG_ENV = "DOCBUS_CONFIG"
DEFAULT_HOME = Path.home() / ".local" / "share" / "docbus"
DEFAULT_OUTBOX = DEFAULT_HOME / "outbox.sqlite"
DEFAULT_BLOBS = DEFAULT_HOME / "blobs"


class SettingsError(Misconfigured, ValueError):
    """A setting has a value it cannot take; the message names the variable."""


class Settings(BaseSettings):
    """Every setting of every docbus command and service (the README has the table)."""

    model_config = SettingsConfigDict(
        # An empty variable (DOCBUS_SSL_CERTFILE=) is unset, not the current folder.
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    bootstrap: str | None = Field(None, description="Kafka bootstrap `host:port[,host:port…]`")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how clients reach Kafka"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (default SCRAM-SHA-512 under SASL_*)"
    )
    sasl_username: str | None = Field(None, description="SASL user")
    sasl_password: SecretStr | None = Field(None, description="SASL password")
    sasl_password_file: Path | None = Field(
        None, description="a file holding the SASL password (a mounted secret)"
    )
    ssl_cafile: Path | None = Field(None, description="CA bundle that signed the brokers")
    ssl_certfile: Path | None = Field(None, description="client certificate (mTLS)")
    ssl_keyfile: Path | None = Field(None, description="client key (mTLS)")
    topic_prefix: str = Field(
        "docbus", pattern=r"^[A-Za-z0-9._-]{1,100}$", description="prefix of every topic"
    )
    session_timeout_ms: int = Field(
        10000, ge=1000, le=300000, description="consumer session timeout, in milliseconds"
    )
    fetch_max_wait_ms: int | None = Field(
        None,
        ge=1,
        le=10000,
        description="how long a consumer's idle fetch waits at the broker, in milliseconds "
        "(unset: 20 for the gateway and the archiver, where a document's latency is made; "
        "100 elsewhere)",
    )
    registry: Path | None = Field(None, description="an operator's registry file")
    directory_file: Path | None = Field(
        None, description="the signed directory file, used when docbus.directory has none"
    )
    outbox: Path = Field(DEFAULT_OUTBOX, description="the publisher's outbox file")
    database: SecretStr | None = Field(
        None,
        description="the archive's PostgreSQL URL, `postgresql://user@host:5432/db` "
        "(unset: SQLite in `--data-dir`)",
    )
    blob_dir: Path = Field(
        DEFAULT_BLOBS, description="the blob store shared by publishers and services"
    )
    blob_threshold: int = Field(
        BLOB_THRESHOLD,
        ge=1024,
        le=MAX_RECORD_BYTES // 2,
        description="attachments over this many bytes go to the blob store",
    )
    listen: str | None = Field(
        None,
        pattern=r"^.+:[0-9]{1,5}$",
        description="`host:port` of a service's /metrics, /healthz and /readyz",
    )
    tansu_bin: Path | None = Field(None, description="another Tansu binary for `docbus dev`")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="the lowest level logged"
    )
    key_password_file: Path | None = Field(
        None, description="file holding the password of encrypted private keys"
    )
    trust_reload_seconds: int = Field(
        10, ge=1, le=60, description="how often services re-read the trust folder (CRLs)"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Read the settings; ``config`` (else ``DOCBUS_CONFIG``) names the TOML file.

    ``overrides`` are command-line values (None means: not given). Raises SettingsError.
    """
    chosen = config or (Path(os.environ[CONFIG_ENV]) if os.environ.get(CONFIG_ENV) else None)
    if chosen is not None and not chosen.is_file():
        raise SettingsError(f"{CONFIG_ENV}/--config: {chosen} is not a file")

    class FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=chosen)

    try:
        return FromFile(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise SettingsError(_explain(exc, chosen)) from None
    except ValueError as exc:  # an unreadable TOML file
        raise SettingsError(f"{chosen}: {exc}") from None


def _explain(exc: ValidationError, config: Path | None) -> str:
    lines = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"])
        variable = ENV_PREFIX + name.upper()
        given = os.environ.get(variable)
        where = (
            f"{variable}={given}"
            if given is not None
            else f"{name} in {config}"
            if config is not None
            else name
        )
        lines.append(f"{where}: {error['msg']}")
    return "; ".join(lines)


def documented() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting: the README's table is made of it."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = "" if field.default is None else str(field.default)
        rows.append((ENV_PREFIX + name.upper(), default, field.description or ""))
    return rows
