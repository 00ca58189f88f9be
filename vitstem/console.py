"""What a run prints: each message once, without Lightning's advertising, in a format a newcomer reads at a glance.

Hydra's logging (``conf/hydra/job_logging/vitstem.yaml``) sends every record to the console and to the run's
``train.log``. Lightning adds its own console handler to the ``lightning`` logger on import, whose records also reach
Hydra's root handlers: every Lightning message would appear twice. :func:`quiet_lightning` (called when Lightning is
imported, see ``vitstem/__init__.py``, and by ``vitstem-train`` once Hydra's logging is set, for a Lightning imported
earlier) removes Lightning's handler whenever the root logger has handlers of its own;
:class:`DropMessages` (a filter of Hydra's handlers) drops the messages the config lists (Lightning's "Tip"s).
Light: imported by Hydra's logging set-up, before the config is checked.
"""
from __future__ import annotations

import logging


class DropMessages(logging.Filter):
    """Drops every record whose message starts with one of ``prefixes``."""

    def __init__(self, prefixes: list[str] = ()) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS message`` for information, ``HH:MM:SS WARNING: message`` for warnings and errors."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            stamp = self.formatTime(record, self.datefmt)
            text = f"{stamp} {record.levelname}: {text[len(stamp) + 1:]}"
        return text


def quiet_lightning() -> None:
    """Leave Lightning's records to the root logger's handlers (Hydra's) when there are any: Lightning's own console
    handler would print each a second time. Without root handlers (vitstem used as a library) Lightning's stays."""
    root = logging.getLogger()
    if not root.handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:  # Lightning's console handlers (not a file or capture one)
                logger.removeHandler(handler)
        logger.propagate = True
