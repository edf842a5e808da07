"""Errors a user can cause and fix: the CLI prints their message and exits 2."""


class UserError(Exception):
    """Bad input (config, data file, command line). The message says what and where."""


class ConfigError(UserError):
    """An invalid config value; the message starts with the key path."""
