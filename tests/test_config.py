"""Config loading: every error names the file, the key and the expected form."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import Config, load_config
from daemon.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "chatterd.yaml"
    path.write_text(text)
    return load_config(path)


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert str(tmp_path / "chatterd.yaml") in message
    return message


def test_default_yaml_sets_every_key_to_its_default() -> None:
    assert load_config(REPO / "configs" / "default.yaml") == Config()


def test_default_yaml_mentions_every_field() -> None:
    import dataclasses

    text = (REPO / "configs" / "default.yaml").read_text()
    def check(value: object, where: str, indent: str) -> None:
        for key in dataclasses.fields(value):  # type: ignore[arg-type]
            assert f"\n{indent}{key.name}:" in text, f"{where}{key.name} missing from default.yaml"
            inner = getattr(value, key.name)
            if dataclasses.is_dataclass(inner):
                check(inner, f"{where}{key.name}.", indent + "  ")

    for section in dataclasses.fields(Config):
        assert f"\n{section.name}:\n" in text
        check(getattr(Config(), section.name), f"{section.name}.", "  ")


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load(tmp_path, "") == Config()


def test_values_are_read(tmp_path: Path) -> None:
    config = load(
        tmp_path, "mqtt:\n  host: broker\n  port: 1884\n  site: kitchen\nspeech:\n  queue_size: 3\n"
    )
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.base_topic) == (
        "broker",
        1884,
        "chatterd/kitchen",
    )
    assert config.speech.queue_size == 3


def test_unknown_top_level_key(tmp_path: Path) -> None:
    message = error(tmp_path, "mqqt:\n  host: x\n")
    assert "unknown key 'mqqt'" in message and "mqtt" in message


def test_unknown_nested_key(tmp_path: Path) -> None:
    message = error(tmp_path, "audio:\n  devise: hw:0\n")
    assert "unknown key 'audio.devise'" in message and "device" in message


def test_wrong_type(tmp_path: Path) -> None:
    message = error(tmp_path, "mqtt:\n  port: '1883'\n")
    assert "'mqtt.port' must be an integer" in message and "str" in message


def test_bool_is_not_a_number(tmp_path: Path) -> None:
    assert "'audio.volume' must be a number" in error(tmp_path, "audio:\n  volume: true\n")


def test_section_must_be_a_mapping(tmp_path: Path) -> None:
    assert "speech: expected a mapping" in error(tmp_path, "speech: 5\n")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("mqtt:\n  qos: 3\n", "mqtt.qos must be 0, 1 or 2"),
        ("mqtt:\n  site: a/b\n", "mqtt.site must be non-empty"),
        ("audio:\n  volume: 1.5\n", "audio.volume must be in 0..1"),
        ("audio:\n  output: speaker\n", "audio.output must be 'pyaudio' or 'wav:PATH'"),
        ("speech:\n  queue_size: 0\n", "speech.queue_size must be >= 1"),
        ("log:\n  level: LOUD\n", "log.level must be"),
        ("tts:\n  default_voice: bob\n", "tts.default_voice must be 'default' or a name under tts.voices"),
    ],
)
def test_bad_values(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in error(tmp_path, text)


def test_invalid_yaml(tmp_path: Path) -> None:
    assert "invalid YAML" in error(tmp_path, "mqtt: [\n")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    config = load(tmp_path, "audio:\n  output: wav:out/speech.wav\ntts:\n  voices:\n    alice: v/alice.wav\n")
    assert config.audio.output == f"wav:{tmp_path / 'out' / 'speech.wav'}"
    assert config.tts.voices == {"alice": str(tmp_path / "v" / "alice.wav")}
