"""hydra/launcher=local with GPUs: two concurrent jobs are not given the same GPUs silently."""
from __future__ import annotations

import pytest

from vitstem.config import ConfigError
from vitstem.scale.environments import _HELD, claim_gpus


def test_a_second_concurrent_job_on_the_same_gpus_is_refused_in_one_line():
    first = claim_gpus("0,1", rank=0)  # rank 0 of the first job (another open file: as another process would)
    try:
        assert first is not None and first in _HELD
        assert claim_gpus("0,1", rank=1) is None  # the job's other ranks rely on their rank 0
        with pytest.raises(ConfigError) as e:
            claim_gpus("0,1", rank=0)  # the second job of the batch, given the same GPUs by submitit
        assert "hydra.sweeper.max_batch_size=1" in str(e.value) and "\n" not in str(e.value)
    finally:
        _HELD.remove(first)
        first.close()
    again = claim_gpus("0,1", rank=0)  # freed when the first job's process ends
    _HELD.remove(again)
    again.close()
    assert claim_gpus("", rank=0) is None and claim_gpus(None, rank=0) is None  # no GPUs: nothing to share
