"""chatterd's configuration: one YAML file loaded once into frozen dataclasses.

Every section is a dataclass; `load_config` walks the YAML mapping against the dataclass fields
and their type hints, so an unknown key, a wrong type or a bad value is reported with the key's
dotted path, the file and the expected form.
"""

from __future__ import annotations

import dataclasses
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
    password: str | None = None
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

    @property
    def base_topic(self) -> str:
        return f"{self.prefix}/{self.site}"


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

    def __post_init__(self) -> None:
        if self.output != "pyaudio" and not (self.output.startswith("wav:") and len(self.output) > 4):
            raise ValueError("output must be 'pyaudio' or 'wav:PATH'")
        if not 0 <= self.volume <= 1:
            raise ValueError("volume must be in 0..1")
        if not 64 <= self.frames_per_buffer <= 65536:
            raise ValueError("frames_per_buffer must be in 64..65536")


@dataclass(frozen=True)
class SpeechConfig:
    # Requests waiting beyond the one being spoken; more are dropped with a `dropped` event.
    queue_size: int = 32
    # Longest text accepted, in characters, and largest payload, in bytes.
    max_text_chars: int = 5000
    max_payload_bytes: int = 65536

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        if self.max_text_chars < 1:
            raise ValueError("max_text_chars must be >= 1")
        if self.max_payload_bytes < 16:
            raise ValueError("max_payload_bytes must be >= 16")


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"

    def __post_init__(self) -> None:
        if self.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")


@dataclass(frozen=True)
class Config:
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    tts: TTSConfig = field(default_factory=TTSConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
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
    raise ConfigError(f"{path}: '{dotted}' must be {expected}, got {_kind(value)} {value!r}")


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _resolve_relative_paths(config: Config, base: Path) -> None:
    """Voice wavs, cache dir and local checkpoints are relative to the config file's folder."""

    def resolve(p: str) -> str:
        candidate = Path(p).expanduser()
        return str(candidate if candidate.is_absolute() else (base / candidate).resolve())

    tts = config.tts
    updates: dict[str, Any] = {"voices": {name: resolve(p) for name, p in tts.voices.items()}}
    if tts.cache_dir is not None:
        updates["cache_dir"] = resolve(tts.cache_dir)
    if tts.checkpoint.startswith((".", "/", "~")):
        updates["checkpoint"] = resolve(tts.checkpoint)
    object.__setattr__(config, "tts", dataclasses.replace(tts, **updates))
    if config.audio.output.startswith("wav:"):
        output = "wav:" + resolve(config.audio.output[4:])
        object.__setattr__(config, "audio", dataclasses.replace(config.audio, output=output))
