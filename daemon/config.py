"""chatterd's configuration: one YAML file loaded once into frozen dataclasses.

Every section is a dataclass; `load_config` walks the YAML mapping against the dataclass fields
and their type hints, so an unknown key, a wrong type or a bad value is reported with the key's
dotted path, the file and the expected form.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from daemon.errors import ConfigError
from tts.config import TTSConfig


@dataclass(frozen=True)
class MqttConfig:
    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    # The password: inline, or (better) from a file or an environment variable; at most one of
    # the three. Never part of repr(), logs or events.
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    password_env: str | None = None
    # TLS: on with `tls: true` (or any tls_* file); CA bundle (null = the system's), client
    # certificate and key for brokers that require them, and `tls_insecure` to skip the host name
    # check (self-signed setups; the chain is still verified against tls_ca_file).
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_insecure: bool = False
    # Persistent session (clean_session off, QoS >= 1 subscriptions, stable client id): the broker
    # keeps what was published to us while we were disconnected and delivers it on reconnect.
    persistent_session: bool = True
    # MQTT client id; null = "chatterd-<site>".
    client_id: str | None = None
    keepalive: int = 60
    # Topics live under "<prefix>/<site>".
    prefix: str = "chatterd"
    site: str = "default"
    qos: int = 1
    # Seconds between reconnect attempts grow from `reconnect_min_s` to `reconnect_max_s`.
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError("port must be in 1..65535")
        if self.qos not in (0, 1, 2):
            raise ValueError("qos must be 0, 1 or 2")
        for name in ("prefix", "site"):
            value = getattr(self, name)
            if not value or any(c in value for c in "+#/\0"):
                raise ValueError(f"{name} must be non-empty without '+', '#', '/' or NUL")
        if self.keepalive < 5:
            raise ValueError("keepalive must be >= 5 seconds")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ValueError("reconnect_min_s must be > 0 and <= reconnect_max_s")
        sources = [n for n in ("password", "password_file", "password_env") if getattr(self, n) is not None]
        if len(sources) > 1:
            raise ValueError(f"set at most one of password, password_file, password_env, not {sources}")
        if sources and self.username is None:
            raise ValueError(f"{sources[0]} needs username")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.persistent_session and self.qos == 0:
            raise ValueError("persistent_session needs qos 1 or 2 (the broker does not queue QoS 0)")

    @property
    def base_topic(self) -> str:
        return f"{self.prefix}/{self.site}"

    @property
    def uses_tls(self) -> bool:
        return self.tls or any(
            f is not None for f in (self.tls_ca_file, self.tls_cert_file, self.tls_key_file)
        )

    @property
    def effective_client_id(self) -> str:
        """The client id sent to the broker: stable across restarts (the persistent session's key)."""
        return self.client_id or f"chatterd-{self.site}"

    def resolve_password(self) -> str | None:
        """The password from `password`, `password_file` (first line) or `password_env`.

        Raises ConfigError naming the file or variable (never the secret) when it cannot be read.
        """
        if self.password_file is not None:
            try:
                lines = Path(self.password_file).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
                raise ConfigError(f"mqtt.password_file {self.password_file}: unreadable: {reason}") from None
            if not lines or not lines[0]:
                raise ConfigError(f"mqtt.password_file {self.password_file}: the first line is empty")
            return lines[0]
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if not value:
                raise ConfigError(f"mqtt.password_env: environment variable {self.password_env} is not set")
            return value
        return self.password


@dataclass(frozen=True)
class AudioConfig:
    # "pyaudio" plays through PortAudio; "wav:PATH" writes what would be played to PATH.
    output: str = "pyaudio"
    # PortAudio output device by exact name; null = the default output device.
    device: str | None = None
    # Master volume 0..1, multiplied with a request's own volume.
    volume: float = 1.0
    # PortAudio buffer size in frames (at the engine's sample rate).
    frames_per_buffer: int = 1024
    # Loudness levelling: each voice's speech is brought to `target_dbfs` (RMS of its voiced
    # frames, learnt over what the voice has said so far), within +-`max_gain_db`; 0 = off.
    target_dbfs: float = -20.0
    max_gain_db: float = 12.0

    def __post_init__(self) -> None:
        if self.output != "pyaudio" and not (self.output.startswith("wav:") and len(self.output) > 4):
            raise ValueError("output must be 'pyaudio' or 'wav:PATH'")
        if not 0 <= self.volume <= 1:
            raise ValueError("volume must be in 0..1")
        if not 64 <= self.frames_per_buffer <= 65536:
            raise ValueError("frames_per_buffer must be in 64..65536")
        if not -60 <= self.target_dbfs <= 0:
            raise ValueError("target_dbfs must be in -60..0")
        if not 0 <= self.max_gain_db <= 40:
            raise ValueError("max_gain_db must be in 0..40")


@dataclass(frozen=True)
class PhraseCacheConfig:
    # Directory for the phrase cache (synthesised sentences as WAV files, keyed by normalised
    # text, voice, model and synthesis settings); relative to the config file; null = no cache.
    dir: str | None = None
    # Size bound in megabytes; the least recently played phrases are evicted beyond it.
    max_mb: float = 200.0

    def __post_init__(self) -> None:
        if self.max_mb <= 0:
            raise ValueError("max_mb must be > 0")


@dataclass(frozen=True)
class SpeechConfig:
    # Requests waiting beyond the one being spoken; more are dropped with a `dropped` event.
    queue_size: int = 32
    # Longest text accepted, in characters, and largest payload, in bytes.
    max_text_chars: int = 5000
    max_payload_bytes: int = 65536
    # Requests per second per client (token bucket: `rate_limit_burst` at once, refilled at
    # `rate_limit_per_s`); the client is the JSON "client" field, else one bucket per source.
    # Over the limit a request gets an `error` event (code rate_limited). 0 = no limit.
    rate_limit_per_s: float = 5.0
    rate_limit_burst: int = 20
    # A request whose text and voice equal a queued request's is dropped (reason "duplicate").
    dedupe: bool = True
    # Long text is spoken sentence by sentence (the next synthesised while one plays); a sentence
    # longer than this many characters is cut at clause, then word boundaries.
    max_sentence_chars: int = 300
    # After the first sentence, consecutive sentences go to the engine together, up to
    # max_sentence_chars per call: each call restarts T3's prefill and the vocoder's chunk schedule
    # (a small first chunk; every chunk repeats the voice prompt), so a paragraph keeps up with
    # playback better in fewer calls. The first sentence stays alone (first audio waits for it).
    # The phrase cache keys on what one call spoke. false = one call per sentence.
    group_sentences: bool = True
    cache: PhraseCacheConfig = field(default_factory=PhraseCacheConfig)

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        if self.rate_limit_per_s < 0:
            raise ValueError("rate_limit_per_s must be >= 0")
        if self.rate_limit_burst < 1:
            raise ValueError("rate_limit_burst must be >= 1")
        if self.max_text_chars < 1:
            raise ValueError("max_text_chars must be >= 1")
        if self.max_payload_bytes < 16:
            raise ValueError("max_payload_bytes must be >= 16")
        if self.max_sentence_chars < 20:
            raise ValueError("max_sentence_chars must be >= 20")


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"

    def __post_init__(self) -> None:
        if self.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")


@dataclass(frozen=True)
class HermesConfig:
    # Rhasspy/Snips Hermes: speak `hermes/tts/say` for this site, answer `hermes/tts/sayFinished`.
    enabled: bool = False
    # The Hermes siteId served; null = mqtt.site.
    site_id: str | None = None


@dataclass(frozen=True)
class HomeAssistantConfig:
    # Home Assistant MQTT discovery; when false, entities a previous run announced are removed.
    enabled: bool = False
    # HA's discovery prefix (HA's MQTT option "discovery prefix").
    discovery_prefix: str = "homeassistant"
    # Where HA publishes its birth message ("online"), on which the daemon announces its entities
    # again. HA's own default; it does not change with the discovery prefix (HA's MQTT option
    # "birth message topic").
    birth_topic: str = "homeassistant/status"
    # Device name shown in HA; null = "chatterd <site>".
    device_name: str | None = None

    def __post_init__(self) -> None:
        if not self.discovery_prefix or any(c in self.discovery_prefix for c in "+#\0"):
            raise ValueError("discovery_prefix must be non-empty without '+', '#' or NUL")
        if not self.birth_topic or any(c in self.birth_topic for c in "+#\0"):
            raise ValueError("birth_topic must be non-empty without '+', '#' or NUL")


@dataclass(frozen=True)
class WyomingConfig:
    # A Wyoming TTS server for Home Assistant Assist (and any Wyoming client); its audio goes back
    # over the connection, not to the local speaker.
    enabled: bool = False
    # Where to listen: tcp://HOST:PORT (10200 is the Wyoming TTS convention) or unix:///PATH.
    uri: str = "tcp://0.0.0.0:10200"
    # Announce the server over mDNS (_wyoming._tcp.local.) so Home Assistant discovers it; tcp only.
    zeroconf: bool = True
    # The name announced over zeroconf; null = "chatterd-<site>".
    zeroconf_name: str | None = None
    # Clients served at once; one more is told `too_many_connections` and disconnected.
    max_connections: int = 8
    # Queue rank of Wyoming requests (an assistant's answer someone is waiting for): "high" goes
    # ahead of queued normal and low announcements.
    priority: str = "high"

    def __post_init__(self) -> None:
        scheme, _, rest = self.uri.partition("://")
        if scheme not in ("tcp", "unix") or not rest:
            raise ValueError("uri must be tcp://HOST:PORT or unix:///PATH")
        if scheme == "tcp":
            host, _, port = rest.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError("a tcp:// uri needs a host and a port in 1..65535, e.g. tcp://0.0.0.0:10200")
        if self.zeroconf and scheme != "tcp":
            raise ValueError("zeroconf needs a tcp:// uri")
        if self.max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        if self.priority not in ("low", "normal", "high"):
            raise ValueError("priority must be low, normal or high")


@dataclass(frozen=True)
class IntegrationsConfig:
    hermes: HermesConfig = field(default_factory=HermesConfig)
    home_assistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    wyoming: WyomingConfig = field(default_factory=WyomingConfig)


@dataclass(frozen=True)
class Config:
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    tts: TTSConfig = field(default_factory=TTSConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    integrations: IntegrationsConfig = field(default_factory=IntegrationsConfig)
    log: LogConfig = field(default_factory=LogConfig)


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file; raises ConfigError naming file, key and expected form."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: config file is not valid UTF-8") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    config: Config = _build(Config, raw, "", path)
    _resolve_relative_paths(config, path.parent)
    try:
        config.mqtt.resolve_password()  # a missing secret file or variable fails at load, not at connect
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return config


def config_from_dict(raw: dict[str, Any], source: str = "<dict>") -> Config:
    """Build a Config from an already-parsed mapping (tests, programmatic use)."""
    config: Config = _build(Config, raw, "", Path(source))
    return config


def _build(cls: type[Any], raw: Any, where: str, path: Path) -> Any:
    label = where or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {label}: expected a mapping of keys, got {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{where}.{key}" if where else str(key)
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{path}: unknown key '{dotted}' (known keys here: {known})")
        kwargs[key] = _coerce(hints[key], value, dotted, path)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"{path}: {prefix}{exc}") from None


def _coerce(hint: Any, value: Any, dotted: str, path: Path) -> Any:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _build(hint, {} if value is None else value, dotted, path)
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, dotted, path)
    if origin is dict:
        key_type, value_type = args
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: '{dotted}' must be a mapping, got {_kind(value)}")
        return {
            _coerce(key_type, k, f"{dotted}.{k}", path): _coerce(value_type, v, f"{dotted}.{k}", path)
            for k, v in value.items()
        }
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and isinstance(value, bool):
        return value
    if hint in (int, float, str) and isinstance(value, hint) and not isinstance(value, bool):
        return value
    expected = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        hint, str(hint)
    )
    shown = "(value hidden)" if dotted.endswith("password") else repr(value)  # secrets stay out of errors
    raise ConfigError(f"{path}: '{dotted}' must be {expected}, got {_kind(value)} {shown}")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _resolve_relative_paths(config: Config, base: Path) -> None:
    """Voice wavs, cache dir, local checkpoints, MQTT secret and TLS files are relative to the config
    file's folder."""

    def resolve(p: str) -> str:
        candidate = Path(p).expanduser()
        return str(candidate if candidate.is_absolute() else (base / candidate).resolve())

    tts = config.tts
    updates: dict[str, Any] = {"voices": {name: resolve(p) for name, p in tts.voices.items()}}
    if tts.cache_dir is not None:
        updates["cache_dir"] = resolve(tts.cache_dir)
    if tts.checkpoint is not None and tts.checkpoint.startswith((".", "/", "~")):
        updates["checkpoint"] = resolve(tts.checkpoint)
    object.__setattr__(config, "tts", dataclasses.replace(tts, **updates))
    mqtt_files: dict[str, Any] = {
        name: resolve(value)
        for name in ("password_file", "tls_ca_file", "tls_cert_file", "tls_key_file")
        if (value := getattr(config.mqtt, name)) is not None
    }
    if mqtt_files:
        object.__setattr__(config, "mqtt", dataclasses.replace(config.mqtt, **mqtt_files))
    if config.audio.output.startswith("wav:"):
        output = "wav:" + resolve(config.audio.output[4:])
        object.__setattr__(config, "audio", dataclasses.replace(config.audio, output=output))
    cache = config.speech.cache
    if cache.dir is not None:
        speech = dataclasses.replace(config.speech, cache=dataclasses.replace(cache, dir=resolve(cache.dir)))
        object.__setattr__(config, "speech", speech)
