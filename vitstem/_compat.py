"""Every private API of another library that vitstem relies on, in one place, with the public alternative where one
exists. ``tests/test_compat.py`` checks each against the installed versions (and that no other private import has
crept into the code), so a library that moved one fails there, naming the library, its version and our use, rather
than in the middle of a run. ``pyproject.toml`` bounds these libraries to the minor versions ``uv.lock`` tests
(lightning < 2.7, hydra-core < 1.4, torch < 2.16); raise a bound after this check and the suite pass on the new
version. timm and wandb are used through public APIs only, so they carry lower bounds alone.

Nothing here is imported at run time: the code imports what it uses where it uses it; this is the list.
"""
from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from importlib.metadata import version
from typing import get_args


@dataclass(frozen=True)
class Private:
    library: str           # the distribution (pip name) whose version decides
    path: str              # module:object.attribute of what we use
    used_in: str           # where vitstem uses it
    public: str            # the public alternative, or why there is none
    instance: tuple = ()   # attributes set on instances (``self.<name>`` in the class's source, as we read them)


PRIVATE = (
    Private("lightning", "lightning.pytorch.strategies.launchers.subprocess_script:_SubprocessScriptLauncher",
            "vitstem/scale/launcher.py (JobLauncher subclasses it), vitstem/scale/ddp.py",
            "none: Lightning has no public way to give its DDP launcher another child command", ("procs",)),
    Private("lightning", "lightning.pytorch.strategies.launchers.subprocess_script:"
            "_SubprocessScriptLauncher._call_children_scripts", "vitstem/scale/launcher.py (overridden)", "none"),
    Private("lightning", "lightning.pytorch.strategies.launchers.subprocess_script:"
            "_SubprocessScriptLauncher._check_can_spawn_children", "vitstem/scale/launcher.py", "none"),
    Private("lightning", "lightning.pytorch.strategies:DDPStrategy", "vitstem/scale/ddp.py (trainer.strategy._launcher "
            "replaced by JobLauncher)", "none: Strategy.launcher is read-only", ("_launcher",)),
    Private("lightning", "lightning.pytorch.trainer.trainer:Trainer", "vitstem/runs/checkpoint.py "
            "(trainer._signal_connector.received_sigterm reset after our checkpoint)",
            "Trainer.received_sigterm reads the flag; nothing public resets it; the checkpoint is dumped by "
            "trainer._checkpoint_connector (Trainer.save_checkpoint writes it, we copy it to the CPU and write it "
            "from a thread) and the logged metrics read from trainer._logger_connector",
            ("_signal_connector", "_checkpoint_connector", "_logger_connector")),
    Private("lightning", "lightning.pytorch.loops.training_epoch_loop:_TrainingEpochLoop._broadcast_sigterm_tensor",
            "vitstem/runs/checkpoint.py (replaced by a no-op: ranks agree on a stop by our own all-reduce every "
            "sync_every steps, not a broadcast and .item() every step)", "none"),
    Private("lightning", "lightning.pytorch.loops.training_epoch_loop:_TrainingEpochLoop._should_accumulate",
            "vitstem/runs/checkpoint.py (no checkpoint between micro-batches)",
            "trainer.fit_loop.epoch_loop.batch_progress with accumulate_grad_batches, written out"),
    Private("lightning", "lightning.pytorch.loops.training_epoch_loop:_TrainingEpochLoop._num_ready_batches_reached",
            "vitstem/runs/checkpoint.py (an epoch's last step)", "trainer.num_training_batches, written out"),
    Private("lightning", "lightning.pytorch.loops.utilities:_is_max_limit_reached", "vitstem/runs/checkpoint.py "
            "(training's last step)", "trainer.max_steps / max_epochs compared by hand"),
    Private("lightning", "lightning.pytorch.trainer.connectors.signal_connector:_SignalConnector",
            "vitstem/runs/checkpoint.py", "none", ("received_sigterm",)),
    Private("lightning", "lightning.pytorch.loops.fit_loop:_FitLoop", "vitstem/runs/checkpoint.py "
            "(iter(loop._data_fetcher) after the sampler skipped to the resumed batch)",
            "none (Lightning issue 20550: the loader's position on resume)", ("_data_fetcher",)),
    Private("lightning", "lightning.fabric.utilities.seed:_collect_rng_states", "vitstem/runs/checkpoint.py",
            "torch.get_rng_state, numpy.random.get_state, random.getstate, written out"),
    Private("lightning", "lightning.fabric.utilities.seed:_set_rng_states", "vitstem/runs/checkpoint.py",
            "torch.set_rng_state, numpy.random.set_state, random.setstate, written out"),
    Private("lightning", "lightning.fabric.plugins.precision.precision:_PRECISION_INPUT",
            "vitstem/config.py (the precisions trainer.precision may name)", "none: a list written out would drift"),
    Private("lightning", "lightning.fabric.loggers.csv_logs:_ExperimentWriter", "vitstem/runs/loggers.py",
            "lightning.pytorch.loggers.csv_logs.ExperimentWriter (its public subclass)",
            ("metrics_file_path", "metrics_keys")),
    Private("lightning", "lightning.pytorch.loggers:CSVLogger", "vitstem/runs/loggers.py (self._experiment: None until "
            "the writer is made)", "none", ("_experiment",)),
    Private("lightning", "lightning.pytorch.callbacks:RichProgressBar._update_metrics",
            "vitstem/runs/progress.py (ProgressBar reads the metrics every n steps)", "none"),
    Private("hydra-core", "hydra._internal.core_plugins.basic_sweeper:BasicSweeper", "vitstem/sweeps/random.py "
            "(RandomSweeper subclasses it)", "hydra.plugins.sweeper.Sweeper, with the batching written out"),
    Private("hydra-core", "hydra._internal.core_plugins.basic_sweeper:BasicSweeper._parse_config",
            "vitstem/sweeps/random.py", "none"),
    Private("hydra-core", "hydra.core.utils:JobReturn", "vitstem/sweeps/random.py (a failed job's exception)",
            "JobReturn.return_value raises it instead of returning it", ("_return_value",)),
    Private("torch", "torch:UntypedStorage._cdata", "vitstem/models/memory.py (a storage's identity while counting "
            "what autograd keeps on the meta device)", "none: data_ptr() is 0 for every meta storage"),
    Private("torch", "torch.amp:GradScaler._get_scale_async", "vitstem/instrument/metrics.py (the loss scale as a "
            "device tensor: true gradient norms under 16-mixed without a sync)", "GradScaler.get_scale() (syncs)"),
    Private("torch", "torch.optim:AdamW", "vitstem/instrument/metrics.py (does the optimizer unscale inside its "
            "step?)", "none", ("_step_supports_amp_scaling",)),
    Private("torch", "torch:_foreach_norm", "vitstem/instrument/metrics.py (one fused norm per list of tensors)",
            "torch.linalg.vector_norm per tensor (one kernel each)"),
    Private("torch", "torch:_foreach_sub", "vitstem/instrument/stability.py", "torch.sub per tensor"),
    Private("torch", "torch.nn.modules.batchnorm:_BatchNorm", "vitstem/models/precise_bn.py (PreciseBN)",
            "(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)"),
    Private("torch", "torch.nn:Module", "vitstem/models/classifier.py, vitstem/instrument/stability.py (is the model "
            "compiled in place?)", "none: Module.compile() sets it", ("_compiled_call_impl",)),
)

# what the code base may import or read privately: anything else fails tests/test_compat.py until it is listed above
LISTED_NAMES = {n for p in PRIVATE for n in re.split(r"[.:]", p.path) if n.startswith("_")} | \
    {a for p in PRIVATE for a in p.instance}


def _resolve(path: str):
    module, _, attrs = path.partition(":")
    obj = importlib.import_module(module)
    for attr in attrs.split("."):
        obj = getattr(obj, attr)
    return obj


def problem(entry: Private) -> str | None:
    """None if ``entry`` is where we expect it in the installed library, else one line naming library and version."""
    where = f"{entry.library} {version(entry.library)}"
    try:
        obj = _resolve(entry.path)
    except (ImportError, AttributeError) as e:
        return f"{where}: {entry.path} is gone ({type(e).__name__}: {e}); vitstem uses it in {entry.used_in}"
    if entry.instance:
        source = "".join(inspect.getsource(c) for c in inspect.getmro(obj)
                         if c.__module__.split(".")[0] == entry.path.split(".")[0])
        missing = [a for a in entry.instance if not re.search(rf"self\.{a}\b", source)]
        if missing:
            return f"{where}: {entry.path} no longer sets {', '.join(missing)}; vitstem uses it in {entry.used_in}"
    if entry.path.endswith(":_PRECISION_INPUT") and "32-true" not in [a for t in get_args(obj) for a in get_args(t)]:
        return f"{where}: {entry.path} no longer lists the precisions as a Union of Literals; used in {entry.used_in}"
    return None
