"""Settings of the lookalike service, from environment variables, a config file or code.

Every setting has an environment variable ``LOOKALIKE_<NAME>`` (``LOOKALIKE_PROJECT``,
``LOOKALIKE_API_KEY``, ``LOOKALIKE_MAX_UPLOAD_BYTES``, ...). A JSON or TOML config file named by
``LOOKALIKE_CONFIG`` (or ``lookalike serve --config``) supplies the same keys; environment variables
win over the file, and explicit keyword arguments win over both. The API key can also be read
from a file (``api_key_file``), so it never has to appear on a command line or in ``ps``.
"""

from __future__ import annotations

import contextvars
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator

from lookalike.errors import LookalikeError

try:  # pydantic-settings reads env vars; without it, plain pydantic + os.environ does the job
    from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
    from pydantic_settings import PydanticBaseSettingsSource

    _HAVE_PYDANTIC_SETTINGS = True
except ImportError:  # pragma: no cover - exercised only where pydantic-settings is absent
    from pydantic import BaseModel as BaseSettings  # type: ignore[assignment]
    from pydantic import ConfigDict as SettingsConfigDict  # type: ignore[assignment]

    NoDecode = None  # type: ignore[assignment]
    PydanticBaseSettingsSource = object  # type: ignore[assignment,misc]
    _HAVE_PYDANTIC_SETTINGS = False

ENV_PREFIX = "LOOKALIKE_"
CONFIG_ENV = "LOOKALIKE_CONFIG"
MIN_API_KEY_LENGTH = 16
# Values of the config file being loaded, read by the lowest-priority settings source.
_CONFIG_FILE_VALUES: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "lookalike_serve_config_file", default={})
# A comma-separated env var must reach our validator as text, not be JSON-decoded first.
_OriginList = Annotated[list[str], NoDecode] if NoDecode is not None else list[str]


class ServeConfigError(LookalikeError):
    """The service settings are invalid or unsafe (e.g. writable without an API key)."""


class ServeSettings(BaseSettings):
    """Everything the service needs to know; see ``docs/serving.md`` for each setting."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore",
                                      populate_by_name=True)

    project: Path = Field(Path("lookalike-data"), description="Project directory to serve.")
    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    workers: int = Field(1, ge=1, le=64, description="Uvicorn worker processes.")
    index: str | None = Field(None, description="Index to serve (default: the project's).")
    read_only: bool = Field(False, description="Refuse every write; no API key needed.")
    api_key: SecretStr | None = Field(None, description="Key for write endpoints.")
    api_key_file: Path | None = Field(None, description="File whose first line is the API key.")
    max_upload_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="Largest upload.")
    max_pixels: int = Field(40_000_000, ge=1024, description="Largest width x height.")
    cors_origins: _OriginList = Field(default_factory=list,
                                    description="Origins allowed by CORS; empty = CORS off.")
    default_k: int = Field(5, ge=1, le=100, description="Results when a query gives no k.")
    max_k: int = Field(100, ge=1, le=1000, description="Largest k a query may ask for.")
    max_concurrent_embeddings: int = Field(
        0, ge=0, le=64, description="Photos embedded at once per worker (0 = number of CPUs).")
    torch_threads: int = Field(0, ge=0, le=64,
                               description="Torch intra-op threads per worker (0 = leave as is).")
    watch: Path | None = Field(None, description="Folder whose images are ingested and "
                               "indexed as they appear, change or go (docs/watch.md).")
    watch_settle: float = Field(1.0, ge=0.0, le=3600.0,
                                description="Seconds a watched file must stay unchanged.")
    watch_poll: bool = Field(False, description="Poll the watched folder instead of inotify.")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                   dotenv_settings, file_secret_settings):  # noqa: ANN001,ANN206
        """Priority: explicit arguments, then ``LOOKALIKE_*`` env vars, then the config file."""
        return init_settings, env_settings, _ConfigFileSource(settings_cls)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        # Env vars give "https://a.example,https://b.example"; JSON lists pass through.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> "ServeSettings":
        if self.default_k > self.max_k:
            raise ValueError(f"default_k {self.default_k} is above max_k {self.max_k}")
        return self

    # ---- derived -------------------------------------------------------------------------------
    def resolved_api_key(self) -> str | None:
        """The API key from ``api_key`` or ``api_key_file`` (never logged or printed)."""
        if self.api_key is not None and self.api_key.get_secret_value():
            return self.api_key.get_secret_value()
        if self.api_key_file is not None:
            try:
                text = Path(self.api_key_file).expanduser().read_text().strip()
            except OSError as error:
                raise ServeConfigError(f"api_key_file {self.api_key_file}: cannot read it "
                                       f"({error.strerror or error})") from None
            key = text.splitlines()[0].strip() if text else ""
            return key or None
        return None

    def check_startable(self) -> None:
        """Refuse unsafe settings: a writable service needs a strong-enough API key."""
        key = self.resolved_api_key()
        if not self.read_only and not key:
            raise ServeConfigError(
                "refusing to start a writable service without an API key: set LOOKALIKE_API_KEY "
                "(or api_key_file in the config), or serve with --read-only")
        if key is not None and len(key) < MIN_API_KEY_LENGTH:
            raise ServeConfigError(f"the API key is too short: use at least "
                                   f"{MIN_API_KEY_LENGTH} characters (e.g. `openssl rand -hex 32`)")
        if self.watch is not None:
            if self.read_only:
                raise ServeConfigError("--watch writes to the catalogue; it cannot be combined "
                                       "with --read-only")
            if not Path(self.watch).expanduser().is_dir():
                raise ServeConfigError(f"watch folder {self.watch}: no such folder")
        if "*" in self.cors_origins and not self.read_only:
            raise ServeConfigError("CORS origin '*' is only allowed with --read-only")


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> ServeSettings:
    """Settings from (lowest to highest priority) a config file, ``LOOKALIKE_*`` env vars and
    ``overrides`` (keyword arguments whose value is None are ignored)."""
    path = config_file or os.environ.get(CONFIG_ENV)
    file_values = _read_config_file(Path(path)) if path else {}
    explicit = {key: value for key, value in overrides.items() if value is not None}
    try:
        if _HAVE_PYDANTIC_SETTINGS:
            token = _CONFIG_FILE_VALUES.set(file_values)
            try:
                return ServeSettings(**explicit)
            finally:
                _CONFIG_FILE_VALUES.reset(token)
        return ServeSettings(**{**file_values, **_env_values(), **explicit})
    except ValueError as error:  # pydantic.ValidationError is a ValueError
        raise ServeConfigError(f"invalid service settings: {_one_line(error)}") from None


class _ConfigFileSource(PydanticBaseSettingsSource):  # type: ignore[misc,valid-type]
    """The values of the config file given to :func:`load_settings` (lowest priority)."""

    def get_field_value(self, field, field_name):  # noqa: ANN001,ANN201 - required by the ABC
        return _CONFIG_FILE_VALUES.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_CONFIG_FILE_VALUES.get())


def _env_values() -> dict[str, Any]:
    names = set(ServeSettings.model_fields)
    found: dict[str, Any] = {}
    for key, value in os.environ.items():
        if key.startswith(ENV_PREFIX):
            name = key[len(ENV_PREFIX):].lower()
            if name in names:
                found[name] = value
    return found


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.expanduser().read_text()
    except OSError as error:
        raise ServeConfigError(f"config file {path}: cannot read it "
                               f"({error.strerror or error})") from None
    try:
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        raise ServeConfigError(f"config file {path}: not valid "
                               f"{'TOML' if path.suffix.lower() == '.toml' else 'JSON'} "
                               f"({error})") from None
    if isinstance(data, dict) and isinstance(data.get("serve"), dict):
        data = data["serve"]  # allow a [serve] table in a larger file
    if not isinstance(data, dict):
        raise ServeConfigError(f"config file {path}: expected a table of settings")
    unknown = sorted(set(data) - set(ServeSettings.model_fields))
    if unknown:
        raise ServeConfigError(f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
                               f"known: {', '.join(ServeSettings.model_fields)}")
    return data


def _one_line(error: Exception) -> str:
    errors = getattr(error, "errors", None)
    if callable(errors):
        parts = []
        for entry in errors():
            where = ".".join(str(p) for p in entry.get("loc", ())) or "settings"
            parts.append(f"{where}: {entry.get('msg')}")
        return "; ".join(parts)
    return str(error).splitlines()[0]
