"""Home Assistant's MQTT discovery schemas for the six platforms chatterd announces, transcribed.

Why a transcription: Home Assistant's wheel needs Python >= 3.13 and this project's machines run
3.11 (PyPI has no older `homeassistant` whose MQTT schemas know the `notify` entity, which came in
2024.5). So the voluptuous schemas are copied here, key for key, from home-assistant/core's
`homeassistant/components/mqtt/`, as of the 2024.x-2025.x releases:

* `schemas.py` / `mixins.py`: MQTT_AVAILABILITY_SCHEMA, MQTT_ENTITY_DEVICE_INFO_SCHEMA (with
  `model_id`, 2024.8+), MQTT_ORIGIN_INFO_SCHEMA (`name` required, `sw_version`, `support_url`),
  MQTT_ENTITY_COMMON_SCHEMA; read at commits 0f5c1b5 and the `model_id` version;
* `config.py`: MQTT_BASE_SCHEMA (`qos`, `encoding`), MQTT_RO_SCHEMA, MQTT_RW_SCHEMA (459c79f);
* `util.py`: valid_topic / valid_subscribe_topic / valid_publish_topic / valid_qos_schema;
* platforms: `notify.py` PLATFORM_SCHEMA_MODERN (2024.5+), `binary_sensor.py`, `button.py`
  (05fd736), `number.py` (_PLATFORM_SCHEMA_BASE + validate_config), `select.py` (01dba6f),
  `event.py` (03ffd74);
* the Home Assistant helpers they use (`cv.string`, `cv.boolean`, `cv.icon`, `cv.template`,
  `cv.configuration_url`, `cv.ensure_list`, ENTITY_CATEGORIES_SCHEMA), re-implemented to the
  same acceptance rules.

Two deliberate differences, both stricter than HA: HA's DISCOVERY_SCHEMAs use
`extra=vol.REMOVE_EXTRA` (a misspelled key is dropped with no error), these use PREVENT_EXTRA
so that a misspelling fails the test; and templates are only parsed (Jinja2 syntax), not
rendered. Abbreviations (`cmd_t`, ...) are not expanded: chatterd sends full key names.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import jinja2
import voluptuous as vol

DEFAULT_PAYLOAD_AVAILABLE = "online"
DEFAULT_PAYLOAD_NOT_AVAILABLE = "offline"
AVAILABILITY_MODES = ("all", "any", "latest")

# Device classes HA accepts for the platforms used (BinarySensorDeviceClass, ButtonDeviceClass,
# NumberDeviceClass subset, EventDeviceClass).
BINARY_SENSOR_DEVICE_CLASSES = (
    "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door", "garage_door",
    "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy", "opening", "plug",
    "power", "presence", "problem", "running", "safety", "smoke", "sound", "tamper", "update",
    "vibration", "window",
)
BUTTON_DEVICE_CLASSES = ("identify", "restart", "update")
EVENT_DEVICE_CLASSES = ("button", "doorbell", "motion")
NUMBER_MODES = ("auto", "box", "slider")


# --- homeassistant.helpers.config_validation, same acceptance rules -----------------------------


def string(value: Any) -> str:
    if value is None:
        raise vol.Invalid("string value is None")
    if isinstance(value, (list, dict)):
        raise vol.Invalid("value should be a string")
    return str(value)


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.lower().strip()
        if lowered in ("1", "true", "yes", "on", "enable"):
            return True
        if lowered in ("0", "false", "no", "off", "disable"):
            return False
    elif isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise vol.Invalid(f"invalid boolean value {value}")


def ensure_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def icon(value: Any) -> str:
    text = string(value)
    if ":" in text:
        return text
    raise vol.Invalid('Icons should be specified in the form "prefix:name"')


def template(value: Any) -> str:
    if value is None:
        raise vol.Invalid("template value is None")
    if isinstance(value, (list, dict)):
        raise vol.Invalid("template value should be a string")
    try:
        jinja2.Environment().parse(str(value))
    except jinja2.TemplateSyntaxError as exc:
        raise vol.Invalid(f"invalid template ({exc})") from None
    return str(value)


def configuration_url(value: Any) -> str:
    """cv.configuration_url: an http(s) URL with a host, or a homeassistant:// path."""
    url = string(value)
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https") and parsed.netloc:
        return url
    if parsed.scheme == "homeassistant":
        return url
    raise vol.Invalid("invalid url")


ENTITY_CATEGORIES_SCHEMA = vol.In(("config", "diagnostic"))


# --- homeassistant/components/mqtt/util.py ----------------------------------------------------


def valid_topic(topic: Any) -> str:
    text = string(topic)
    try:
        raw = text.encode("utf-8")
    except UnicodeError as exc:
        raise vol.Invalid("MQTT topic name/filter must be valid UTF-8 string.") from exc
    if not raw:
        raise vol.Invalid("MQTT topic name/filter must not be empty.")
    if len(raw) > 65535:
        raise vol.Invalid("MQTT topic name/filter must not be longer than 65535 encoded bytes.")
    if "\0" in text:
        raise vol.Invalid("MQTT topic name/filter must not contain null character.")
    if any(c <= "\u001f" or "\u007f" <= c <= "\u009f" or "\ufffe" <= c for c in text):
        raise vol.Invalid("MQTT topic name/filter must not contain control characters.")
    return text


def valid_subscribe_topic(topic: Any) -> str:
    text = valid_topic(topic)
    for i, c in enumerate(text):
        if c == "+" and ((i > 0 and text[i - 1] != "/") or (i < len(text) - 1 and text[i + 1] != "/")):
            raise vol.Invalid("Single-level wildcard must occupy an entire level of the filter")
    index = text.find("#")
    if index != -1:
        if index != len(text) - 1:
            raise vol.Invalid("Multi-level wildcard must be the last character in the topic filter.")
        if len(text) > 1 and text[index - 1] != "/":
            raise vol.Invalid("Multi-level wildcard must be after a topic level separator.")
    return text


def valid_publish_topic(topic: Any) -> str:
    text = valid_topic(topic)
    if "+" in text or "#" in text:
        raise vol.Invalid("Wildcards cannot be used in topic names")
    return text


valid_qos_schema = vol.All(vol.Coerce(int), vol.In([0, 1, 2]))


# --- schemas.py ---------------------------------------------------------------------------------


def _has_identifier(value: dict[str, Any]) -> dict[str, Any]:
    if value.get("identifiers") or value.get("connections"):
        return value
    raise vol.Invalid("Device must have at least one identifying value in 'identifiers' and/or 'connections'")


MQTT_AVAILABILITY_SCHEMA = vol.Schema(
    {
        vol.Exclusive("availability_topic", "availability"): valid_subscribe_topic,
        vol.Optional("availability_template"): template,
        vol.Optional("payload_available", default=DEFAULT_PAYLOAD_AVAILABLE): string,
        vol.Optional("payload_not_available", default=DEFAULT_PAYLOAD_NOT_AVAILABLE): string,
        vol.Optional("availability_mode", default="latest"): vol.All(string, vol.In(AVAILABILITY_MODES)),
        vol.Exclusive("availability", "availability"): vol.All(
            ensure_list,
            [
                vol.Schema(
                    {
                        vol.Required("topic"): valid_subscribe_topic,
                        vol.Optional("payload_available", default=DEFAULT_PAYLOAD_AVAILABLE): string,
                        vol.Optional("payload_not_available", default=DEFAULT_PAYLOAD_NOT_AVAILABLE): string,
                        vol.Optional("value_template"): template,
                    }
                )
            ],
        ),
    }
)

MQTT_ENTITY_DEVICE_INFO_SCHEMA = vol.All(
    vol.Schema(
        {
            vol.Optional("identifiers", default=list): vol.All(ensure_list, [string]),
            vol.Optional("connections", default=list): vol.All(ensure_list, [vol.All(vol.Length(2), [string])]),
            vol.Optional("manufacturer"): string,
            vol.Optional("model"): string,
            vol.Optional("model_id"): string,
            vol.Optional("name"): string,
            vol.Optional("hw_version"): string,
            vol.Optional("serial_number"): string,
            vol.Optional("sw_version"): string,
            vol.Optional("via_device"): string,
            vol.Optional("suggested_area"): string,
            vol.Optional("configuration_url"): configuration_url,
        }
    ),
    _has_identifier,
)

MQTT_ORIGIN_INFO_SCHEMA = vol.Schema(
    {
        vol.Required("name"): string,
        vol.Optional("sw_version"): string,
        vol.Optional("support_url"): configuration_url,
    }
)

MQTT_ENTITY_COMMON = {
    **MQTT_AVAILABILITY_SCHEMA.schema,
    vol.Optional("device"): MQTT_ENTITY_DEVICE_INFO_SCHEMA,
    vol.Optional("origin"): MQTT_ORIGIN_INFO_SCHEMA,
    vol.Optional("enabled_by_default", default=True): boolean,
    vol.Optional("entity_category"): ENTITY_CATEGORIES_SCHEMA,
    vol.Optional("icon"): icon,
    vol.Optional("json_attributes_topic"): valid_subscribe_topic,
    vol.Optional("json_attributes_template"): template,
    vol.Optional("object_id"): string,
    vol.Optional("unique_id"): string,
}

# --- config.py ------------------------------------------------------------------------------------

MQTT_BASE = {
    vol.Optional("qos", default=0): valid_qos_schema,
    vol.Optional("encoding", default="utf-8"): string,
}
MQTT_RO = {**MQTT_BASE, vol.Required("state_topic"): valid_subscribe_topic, vol.Optional("value_template"): template}
MQTT_RW = {
    **MQTT_BASE,
    vol.Required("command_topic"): valid_publish_topic,
    vol.Optional("optimistic", default=False): boolean,
    vol.Optional("retain", default=False): boolean,
    vol.Optional("state_topic"): valid_subscribe_topic,
}


def _platform(*parts: dict[Any, Any]) -> vol.Schema:
    merged: dict[Any, Any] = {}
    for part in parts:
        merged.update(part)
    return vol.Schema({**merged, **MQTT_ENTITY_COMMON}, extra=vol.PREVENT_EXTRA)


def _number_min_below_max(config: dict[str, Any]) -> dict[str, Any]:
    if config["min"] > config["max"]:
        raise vol.Invalid("max must be >= min")
    return config


_name = vol.Any(string, None)

# --- the platforms --------------------------------------------------------------------------------

DISCOVERY_SCHEMAS: dict[str, Any] = {
    "notify": _platform(
        MQTT_BASE,
        {
            vol.Optional("command_template"): template,
            vol.Required("command_topic"): valid_publish_topic,
            vol.Optional("name"): _name,
            vol.Optional("retain", default=False): boolean,
        },
    ),
    "binary_sensor": _platform(
        MQTT_RO,
        {
            vol.Optional("device_class"): vol.Any(vol.All(vol.Lower, vol.In(BINARY_SENSOR_DEVICE_CLASSES)), None),
            vol.Optional("expire_after"): vol.All(vol.Coerce(int), vol.Range(min=1)),
            vol.Optional("force_update", default=False): boolean,
            vol.Optional("name"): _name,
            vol.Optional("off_delay"): vol.All(vol.Coerce(int), vol.Range(min=1)),
            vol.Optional("payload_off", default="OFF"): string,
            vol.Optional("payload_on", default="ON"): string,
        },
    ),
    "button": _platform(
        MQTT_BASE,
        {
            vol.Optional("command_template"): template,
            vol.Required("command_topic"): valid_publish_topic,
            vol.Optional("device_class"): vol.Any(vol.In(BUTTON_DEVICE_CLASSES), None),
            vol.Optional("name"): _name,
            vol.Optional("payload_press", default="PRESS"): string,
            vol.Optional("retain", default=False): boolean,
        },
    ),
    "number": vol.All(
        _platform(
            MQTT_RW,
            {
                vol.Optional("command_template"): template,
                vol.Optional("device_class"): vol.Any(string, None),
                vol.Optional("max", default=100.0): vol.Coerce(float),
                vol.Optional("min", default=0.0): vol.Coerce(float),
                vol.Optional("mode", default="auto"): vol.In(NUMBER_MODES),
                vol.Optional("name"): _name,
                vol.Optional("payload_reset", default="None"): string,
                vol.Optional("step", default=1.0): vol.All(vol.Coerce(float), vol.Range(min=1e-3)),
                vol.Optional("unit_of_measurement"): vol.Any(string, None),
                vol.Optional("value_template"): template,
            },
        ),
        _number_min_below_max,
    ),
    "select": _platform(
        MQTT_RW,
        {
            vol.Optional("command_template"): template,
            vol.Optional("name"): _name,
            vol.Required("options"): ensure_list,
            vol.Optional("value_template"): template,
        },
    ),
    "event": _platform(
        MQTT_RO,
        {
            vol.Optional("device_class"): vol.All(vol.Lower, vol.In(EVENT_DEVICE_CLASSES)),
            vol.Optional("name"): _name,
            vol.Required("event_types"): vol.All(ensure_list, [string]),
        },
    ),
}
