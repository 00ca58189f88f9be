"""A run's console: each message once (Lightning's handler and Hydra's would print it twice), no advertising."""
import logging
from collections import Counter

import pytest

from tests.helpers import TINY, run_cli, run_forked
from vitstem.console import ConsoleFormatter, DropMessages, quiet_lightning


def test_lightnings_console_handler_goes_when_the_root_logger_has_handlers(monkeypatch):
    import lightning  # noqa: F401  (its import adds the handler; vitstem's hook may already have removed it)

    root, light = logging.getLogger(), logging.getLogger("lightning")
    own = logging.StreamHandler()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(light, "handlers", [own])
    quiet_lightning()  # a library user without logging set up: Lightning keeps its handler
    assert light.handlers == [own]
    capture = logging.FileHandler("/dev/null")
    monkeypatch.setattr(root, "handlers", [capture])
    quiet_lightning()
    assert light.handlers == [] and light.propagate


def test_the_filter_drops_the_listed_messages_and_the_format_names_warnings():
    drop = DropMessages(["💡 Tip:"])
    record = lambda msg, level=logging.INFO: logging.LogRecord("lightning", level, __file__, 1, msg, (), None)  # noqa: E731
    assert not drop.filter(record("💡 Tip: For seamless cloud logging, try installing litlogger"))
    assert drop.filter(record("GPU available: False, used: False"))
    text = ConsoleFormatter().format(record("warming up for %d epochs", logging.WARNING))
    assert text[2] == text[5] == ":" and text[8:] == " WARNING: warming up for %d epochs"
    assert ConsoleFormatter().format(record("Seed set to 0"))[8:] == " Seed set to 0"


@pytest.mark.e2e
@pytest.mark.parametrize("start", [run_cli, run_forked], ids=["new_interpreter", "lightning_imported_first"])
def test_a_run_prints_each_message_once_and_no_tip(tmp_path, start):
    proc = start(*TINY, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip(" ─┌┐└┘├┤┬┴┼━")]
    assert {line: n for line, n in Counter(lines).items() if n > 1} == {}
    assert "Tip" not in proc.stdout + proc.stderr and "litlogger" not in proc.stdout + proc.stderr
    for message in ("Seed set to 0", "GPU available: False, used: False", "run dir ", "vitstem run: finished"):
        assert sum(message in line for line in lines) == 1, message
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("GPU available") == 1 and "Tip" not in log and "[lightning.pytorch" in log
