"""The training loop (minibert/training/loop.py) with a stub task: which steps get a dropout key."""
from __future__ import annotations

import numpy as np
import pytest

from minibert.config import BertConfig
from minibert.nn.optim import AdamWConfig
from minibert.training.loop import LoopSettings, run_loop
from minibert.training.rundir import open_run
from support import backend_or_skip


class KeyRecordingTask:
    """One parameter, loss = sum(w^2) / normaliser; records the dropout key each micro-batch is given."""

    tokens_per_batch = 4

    def __init__(self, config, backend):
        self.config, self.backend, self.keys = config, backend, []

    def initial_params(self):
        return {"w": np.ones(3, np.float32)}

    def forward_backward(self, params, arrays, key, normaliser):
        self.keys.append(key)
        xp = self.backend.xp
        return xp.sum(params["w"] * params["w"]) / normaliser, {"w": 2.0 * params["w"] / normaliser}

    def label_count(self, arrays):
        return self.backend.asarray(1.0, dtype="float32")

    def train_batches(self, count):
        return [self.backend.asarray(np.zeros(1, np.float32)) for _ in range(count)]

    def data_state(self):
        return {}

    def load_data_state(self, state):
        pass

    def evaluate(self, params):
        return {"eval_loss": 0.0}

    def run_config(self):
        return {}

    def run_files(self):
        return {}

    def summary(self, metrics):
        return "done"


@pytest.mark.parametrize("dropout, expect_key", [
    (dict(hidden_dropout=0.0, attention_dropout=0.0, classifier_dropout=0.3), True),     # classifier-only dropout
    (dict(hidden_dropout=0.1, attention_dropout=0.0, classifier_dropout=0.0), True),
    (dict(hidden_dropout=0.0, attention_dropout=0.0, classifier_dropout=0.0), False),
])
def test_every_kind_of_dropout_gets_a_key(tmp_path, dropout, expect_key):
    backend = backend_or_skip("numpy")
    config = BertConfig.preset("tiny", vocab_size=50, task="sequence", num_labels=2, **dropout)
    assert config.has_dropout == expect_key
    task = KeyRecordingTask(config, backend)
    loop = LoopSettings(steps=2, optimizer=AdamWConfig(total_steps=2), seed=0, dtype="float32", eval_every=10,
                        save_every=10, keep_checkpoints=1, progress=False)
    with open_run(out=str(tmp_path / "run"), resume=None, settings={}, fixed=(), fallback=False,
                  script="test") as run:
        run_loop(task, run, loop, backend, log=lambda *_: None)
    assert len(task.keys) == 2 and all((key is not None) == expect_key for key in task.keys)
