"""chatterd's asyncio service: MQTT in, a speech queue, audio out. It never imports torch."""

# The one place the version lives: pyproject.toml reads it (setuptools `attr:`), and what the
# daemon reports (Home Assistant's device and origin blocks, `chatterd doctor`) is this, so a
# source checkout that was never pip-installed reports the same version as an installed one.
__version__ = "0.1.0"

# Where users of chatterd get help; Home Assistant shows it as the origin's support link.
# TODO(lead): confirm this is the project's public address before a release.
PROJECT_URL = "https://github.com/chatterd/chatterd"
