"""Loggers: Lightning's CSV logger always (continued, not rewritten, on resume); wandb on request, offline
when no API key is set or the server does not answer within seconds, one wandb run per run folder (its id is kept
there and reused on resume). wandb never stops a run: whatever goes wrong with it, training goes on with the CSV log."""
from __future__ import annotations

import base64
import csv
import inspect
import json
import netrc
import os
import threading
import urllib.error
import urllib.request
import uuid
import warnings
from pathlib import Path
from urllib.parse import urlparse

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers import WandbLogger

WANDB_ID_FILE = "wandb_run_id"


class CSVLogger(_CSVLogger):
    """Lightning's ``CSVLogger``; :meth:`resume_before` keeps the rows an earlier attempt logged.

    Lightning deletes ``metrics.csv`` when its writer starts in a folder that has one; after a resume the
    rows logged before the checkpoint's step are written back first, and later rows (logged after the
    checkpoint by the attempt that was killed, and about to be logged again) are dropped. The checkpoint
    callback flushes the file before each checkpoint (:meth:`flush`) and records its row count, and the
    resumed run keeps exactly those rows (:meth:`keep_rows`): no row an interrupted attempt logged after its
    checkpoint (an epoch-end row of the interrupted epoch) survives.
    """

    _kept: tuple[list[str], list[dict]] | None = None
    rows = 0  # rows in metrics.csv after the last flush (counted on the rank that writes it)

    def resume_before(self, step: int) -> None:
        path = Path(self.log_dir) / "metrics.csv"
        if path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                rows = [r for r in reader if r.get("step") not in (None, "") and int(float(r["step"])) < step]
                self._kept = (list(reader.fieldnames or []), rows)

    @property
    def experiment(self):
        first = self._experiment is None
        writer = super().experiment  # on other ranks than 0, Lightning's dummy: nothing to restore there
        if first and self._kept is not None and isinstance(writer, _ExperimentWriter):
            keys, rows = self._kept
            with open(writer.metrics_file_path, "w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=keys)
                out.writeheader()
                out.writerows(rows)
            writer.metrics_keys = list(keys)
            self.rows = len(rows)
            self._kept = None
        return writer

    def save(self) -> None:
        if isinstance(self._experiment, _ExperimentWriter):
            self.rows += len(self._experiment.metrics)
        super().save()

    def flush(self) -> int:
        """Write the rows logged so far to ``metrics.csv`` (a checkpoint is about to be taken); return how many
        rows the file holds."""
        self.save()
        return self.rows

    def keep_rows(self, n: int) -> None:
        """Keep the first ``n`` rows of ``metrics.csv`` (the rows it held when the resumed checkpoint was taken;
        later ones were logged by the stopped attempt and are logged again)."""
        writer = self.experiment
        if not isinstance(writer, _ExperimentWriter) or not os.path.isfile(writer.metrics_file_path):
            return
        self.save()
        with open(writer.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            keys, rows = list(reader.fieldnames or []), list(reader)
        if len(rows) > n:
            with open(writer.metrics_file_path, "w", newline="") as f:
                out = csv.DictWriter(f, fieldnames=keys)
                out.writeheader()
                out.writerows(rows[:n])
        self.rows = min(n, len(rows))


WANDB_PROBE_TIMEOUT = 5.0  # s: a server that has not answered the probe by then is given up
WANDB_INIT_TIMEOUT = 30.0  # s: wandb.init online (default 90 s), then the run falls back to offline
WANDB_FINISH_TIMEOUT = 60.0  # s: uploading what is left at the end (default: forever); the rest stays for `wandb sync`


def _wandb_base() -> str:
    return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/")


def _wandb_api_key(base: str | None = None) -> str | None:
    """The API key wandb would use for ``base``: ``WANDB_API_KEY``, else ``~/.netrc``'s entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    base = base or _wandb_base()
    try:
        entry = netrc.netrc().authenticators(urlparse(base if "://" in base else "https://" + base).hostname or "")
    except (FileNotFoundError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


def wandb_api_key_present() -> bool:
    """True if wandb could authenticate: ``WANDB_API_KEY`` or an entry in ~/.netrc for the server's host."""
    return _wandb_api_key() is not None


def wandb_run_id(save_dir: str) -> str:
    """The wandb run id of this run folder: read from ``<save_dir>/wandb_run_id``, else made and kept there."""
    path = Path(save_dir) / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:8]  # wandb's own ids: 8 lowercase alphanumerics
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


def wandb_reachable(timeout: float = WANDB_PROBE_TIMEOUT) -> str | None:
    """None if the wandb server answers an authenticated query within ``timeout`` seconds, else why not (one phrase).

    One HTTP request (``{ viewer { id } }`` to ``<WANDB_BASE_URL>/graphql``, through the same proxy settings as
    wandb), made outside wandb: ``wandb.login`` would start wandb's session, which then ignores the offline mode
    chosen here. The request runs in a thread joined after ``timeout`` s, so a server that accepts the connection and
    never answers (or answers a byte at a time) costs ``timeout`` seconds, never more.
    """
    base = _wandb_base()
    url = (base if "://" in base else "https://" + base) + "/graphql"
    key = _wandb_api_key(base) or ""
    request = urllib.request.Request(url, data=json.dumps({"query": "query { viewer { id } }"}).encode(), headers={
        "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode()})
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                body = json.loads(response.read(1 << 20) or b"{}")
            viewer = (body.get("data") or {}).get("viewer") if isinstance(body, dict) else None
            outcome.append(None if viewer else "the API key was not accepted")
        except urllib.error.HTTPError as e:
            outcome.append("the API key was not accepted" if e.code in (401, 403) else f"{url} answered HTTP {e.code}")
        except (OSError, ValueError) as e:  # refused, no DNS, timed out, TLS, not JSON
            reason = getattr(e, "reason", e)
            outcome.append(f"no answer from {base} within {timeout:g} s" if isinstance(reason, TimeoutError)
                           else f"cannot reach {base} ({reason})")

    thread = threading.Thread(target=probe, name="wandb-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return outcome[0] if outcome else f"no answer from {base} within {timeout:g} s"


def wandb_offline_reason(probe_timeout: float = WANDB_PROBE_TIMEOUT) -> str | None:
    """Why this process's wandb run must be offline (``WANDB_MODE``, no API key, a server that does not answer or
    refuses the key), or None to go online. Decided before wandb makes any network call; other ranks than 0 never
    log, so they do not probe."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    mode = os.environ.get("WANDB_MODE")
    if mode in ("offline", "dryrun", "disabled"):
        return f"WANDB_MODE={mode}"
    if not wandb_api_key_present():
        return "no API key (WANDB_API_KEY or `wandb login`)"
    if getattr(rank_zero_only, "rank", 0) != 0:
        return "not global rank 0"
    return wandb_reachable(probe_timeout)


class WandbRunLogger(WandbLogger):
    """Lightning's ``WandbLogger`` that never stops a run: the mode chosen is passed to ``wandb.init`` itself (not
    through ``WANDB_MODE``, which wandb ignores once its session has started), ``wandb.init`` online is bounded by
    ``settings.init_timeout`` and falls back to offline when it fails, and any error of wandb while logging turns
    this logger off with one warning (the CSV log goes on)."""

    _broken = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)  # else wandb warns that the setting has no effect

    @property
    def experiment(self):
        if self._experiment is not None or self._broken:
            return self._experiment if self._experiment is not None else _Nothing()
        try:
            return super().experiment
        except Exception as e:  # noqa: BLE001  (wandb raises CommError, UsageError, TimeoutError, ...)
            if self._wandb_init.get("mode") == "offline":
                return self._give_up(e)
            warnings.warn(f"wandb: the online run could not start ({_one_line(e)}); logging offline to "
                          f"{self._save_dir}/wandb (upload later with `wandb sync`)", stacklevel=2)
            self._finish_quietly()
            self._wandb_init["mode"], self._experiment = "offline", None
            try:
                return super().experiment
            except Exception as e2:  # noqa: BLE001
                return self._give_up(e2)

    @property
    def mode(self) -> str:
        """``online``, ``offline`` or ``disabled``: what ``wandb.init`` is (or was) given; ``off`` after giving up."""
        return "off" if self._broken else self._wandb_init["mode"]

    def _give_up(self, e: Exception):
        warnings.warn(f"wandb: logging to wandb is off for this run ({_one_line(e)}); metrics.csv holds the log",
                      stacklevel=3)
        self._finish_quietly()
        self._broken, self._experiment = True, None
        return _Nothing()

    @staticmethod
    def _finish_quietly() -> None:
        """Close what the failed ``wandb.init`` left: the run, if any, and wandb's service process (which would
        otherwise hold the run id: "run ID ... is in use")."""
        import wandb
        for close in (lambda: wandb.run is not None and wandb.finish(exit_code=1), wandb.teardown):
            try:
                close()
            except Exception:  # noqa: BLE001
                pass

    def _guarded(name: str):  # noqa: N805  (a decorator of the methods below)
        def method(self, *args, **kwargs):
            if self._broken:
                return None
            try:
                return getattr(WandbLogger, name)(self, *args, **kwargs)
            except Exception as e:  # noqa: BLE001
                self._give_up(e)
        method.__name__ = name
        return method

    log_metrics = _guarded("log_metrics")
    log_hyperparams = _guarded("log_hyperparams")
    after_save_checkpoint = _guarded("after_save_checkpoint")
    del _guarded


class _Nothing:
    """What a wandb logger that gave up hands out as its ``experiment``: any attribute, any call, nothing done."""

    def __getattr__(self, name):
        return self

    def __call__(self, *args, **kwargs):
        return None


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: " + " ".join(str(e).split())[:200]


def wandb_logger(offline: bool | None = None, save_dir: str = ".", choices: dict | None = None,
                 tags: list | None = None, probe_timeout: float = WANDB_PROBE_TIMEOUT,
                 init_timeout: float = WANDB_INIT_TIMEOUT, **kwargs) -> WandbRunLogger:
    """A :class:`WandbRunLogger`; ``offline=None`` means offline exactly when :func:`wandb_offline_reason` gives a
    reason (one warning when that is the server, within ``probe_timeout`` seconds). The run id is the run folder's
    (:func:`wandb_run_id`), with ``resume="allow"``: a resumed run continues its chart. ``choices`` (stem,
    attention, optimizer, ...) become tags ``key=value`` beside ``tags``."""
    import wandb

    from vitstem.config import ConfigError

    takes = set(inspect.signature(WandbLogger.__init__).parameters) | set(inspect.signature(wandb.init).parameters)
    if unknown := sorted(set(kwargs) - takes):  # before the probe, and not left for wandb.init to refuse mid-run
        raise ConfigError(f"logger.wandb.{unknown[0]}={kwargs[unknown[0]]!r} is not a known setting: logger.wandb "
                          f"takes Lightning's WandbLogger's and wandb.init's arguments; fix its spelling or remove it")
    if offline is None:
        reason = wandb_offline_reason(probe_timeout)
        offline = reason is not None
        if reason and not reason.startswith(("WANDB_MODE", "no API key", "not global rank")):
            warnings.warn(f"wandb: {reason}; logging offline to {save_dir}/wandb (upload later with `wandb sync`)",
                          stacklevel=2)
    tags = list(tags or []) + [f"{k}={v}" for k, v in (choices or {}).items() if v is not None]
    settings = {"init_timeout": init_timeout, "finish_timeout": WANDB_FINISH_TIMEOUT, **kwargs.pop("settings", {})}
    mode = "disabled" if os.environ.get("WANDB_MODE") == "disabled" else "offline" if offline else "online"
    # the mode goes to wandb.init; Lightning's offline=True would set WANDB_MODE for the whole process (the next job)
    return WandbRunLogger(save_dir=save_dir, id=wandb_run_id(save_dir), resume="allow", tags=tags, mode=mode,
                          settings=settings, **kwargs)


def finish_wandb(failed: bool) -> None:
    """Close this process's wandb run, if one is open (one run per job, also when the job fails)."""
    import wandb

    if wandb.run is not None:
        try:  # bounded by settings.finish_timeout; what is not uploaded stays on disk for `wandb sync`
            wandb.finish(exit_code=1 if failed else 0)
        except Exception as e:  # noqa: BLE001  (the run's results are written: wandb cannot fail it now)
            warnings.warn(f"wandb: closing the run failed ({_one_line(e)}); metrics.csv holds the log", stacklevel=2)
