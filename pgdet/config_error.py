"""The error of a config value pgdet cannot use, shared by the config loading (pgdet/engine) and
the models that check their options as they are built (pgdet/modeling).

Why one class: the entry points (pgdet/engine/entry.py) print a ConfigError as one line without a
traceback, so every check that raises it stops a run at start with just its message.
"""


class ConfigError(ValueError):
    """A config file, override or option value that pgdet cannot use; the message says what to
    change. A ValueError, as yacs' and the options' checks raise."""


def raise_if_invalid(what: str, problems) -> None:
    """One ConfigError listing every problem of the `what` options (e.g. "policy-gradient"), on
    one line: ``Invalid <what> config: <problem>; <problem>``."""
    if problems:
        raise ConfigError(f"Invalid {what} config: " + "; ".join(problems))
