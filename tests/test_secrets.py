"""MQTT credentials and TLS settings in the config: where the password may come from, that
it never shows in reprs or error messages, and that files resolve against the config folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import MqttConfig, load_config
from daemon.errors import ConfigError
from daemon.mqtt import tls_context

SECRET = "hunter2-correct-horse"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "chatterd.yaml"
    path.write_text(text)
    return path


def test_password_from_a_file_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "mqtt").write_text(SECRET + "\nignored second line\n")
    config = load_config(write(tmp_path, "mqtt:\n  username: tts\n  password_file: secrets/mqtt\n"))
    assert config.mqtt.password_file == str(tmp_path / "secrets" / "mqtt")
    assert config.mqtt.resolve_password() == SECRET
    assert SECRET not in repr(config)


def test_password_from_an_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATTERD_MQTT_PASSWORD", SECRET)
    config = load_config(write(tmp_path, "mqtt:\n  username: tts\n  password_env: CHATTERD_MQTT_PASSWORD\n"))
    assert config.mqtt.resolve_password() == SECRET


def test_inline_password_is_kept_out_of_repr() -> None:
    config = MqttConfig(username="tts", password=SECRET)
    assert config.resolve_password() == SECRET and SECRET not in repr(config)


@pytest.mark.parametrize(
    ("yaml_text", "fragment"),
    [
        ("mqtt:\n  username: u\n  password_file: nope\n", "mqtt.password_file"),
        ("mqtt:\n  username: u\n  password_env: CHATTERD_UNSET_VARIABLE_X\n", "CHATTERD_UNSET_VARIABLE_X is not set"),
        ("mqtt:\n  username: u\n  password: a\n  password_env: B\n", "at most one of password"),
        ("mqtt:\n  password: a\n", "password needs username"),
        ("mqtt:\n  tls_cert_file: c.pem\n", "tls_cert_file and tls_key_file go together"),
        ("mqtt:\n  qos: 0\n", "persistent_session needs qos 1 or 2"),
    ],
)
def test_bad_secret_settings_fail_at_load(tmp_path: Path, yaml_text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, yaml_text))
    assert fragment in str(info.value) and str(tmp_path / "chatterd.yaml") in str(info.value)


def test_a_mistyped_password_is_not_echoed_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "mqtt:\n  username: u\n  password: 12345678987\n"))
    assert "'mqtt.password' must be a string" in str(info.value) and "12345678987" not in str(info.value)


def test_empty_password_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="first line is empty"):
        load_config(write(tmp_path, "mqtt:\n  username: u\n  password_file: empty\n"))


def test_tls_settings(tmp_path: Path) -> None:
    assert tls_context(MqttConfig()) is None
    assert not MqttConfig().uses_tls
    context = tls_context(MqttConfig(tls=True, tls_insecure=True))
    assert context is not None and not context.check_hostname
    strict = tls_context(MqttConfig(tls=True))
    assert strict is not None and strict.check_hostname
    config = load_config(write(tmp_path, "mqtt:\n  tls_ca_file: ca.pem\n"))
    assert config.mqtt.uses_tls and config.mqtt.tls_ca_file == str(tmp_path / "ca.pem")
    with pytest.raises(OSError):
        tls_context(config.mqtt)  # ca.pem does not exist: reported when connecting, then retried
