"""chatterd's asyncio service: MQTT in, a speech queue, audio out. It never imports torch."""

# The one place the version lives: pyproject.toml reads it (setuptools `attr:`), and what the
# daemon reports (Home Assistant's device and origin blocks, `chatterd doctor`) is this, so a
# source checkout that was never pip-installed reports the same version as an installed one.
__version__ = "0.1.0"

# Where users of chatterd get help (the project's home, not the upstream model's); Home Assistant
# shows it as the origin's support link.
PROJECT_URL = "https://github.com/chatterd/chatterd"
