"""Registers vitstem's random sweeper with Hydra as ``hydra/sweeper=random``; the code is vitstem.sweeps.random.

Hydra instantiates plugins only from classes defined under ``hydra_plugins``, hence the empty subclass.
"""
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from vitstem.sweeps import random


class RandomSweeper(random.RandomSweeper):
    """:class:`vitstem.sweeps.random.RandomSweeper`, as Hydra's plugin loader requires it."""


@dataclass
class RandomSweeperConf:
    _target_: str = "hydra_plugins.vitstem_sweeper.RandomSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None
    samples: int | None = None   # N random samples of the interval() keys
    seed: int = 0                # sample i of a key depends on (seed, i, key) only


ConfigStore.instance().store(group="hydra/sweeper", name="random", node=RandomSweeperConf, provider="vitstem")
