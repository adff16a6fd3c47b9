"""The pretraining recipe's options: the learning-rate schedules, the masking rate and the held-out evaluation that
stays the same whatever the recipe (docs/guide/12-a-recipe-for-a-small-budget.md)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from minibert.training import pretrain
from minibert.nn.optim import learning_rate
from minibert.training.settings import TrainSettings
from minibert.config import IGNORE_LABEL, BertConfig


def _schedule(settings: TrainSettings) -> np.ndarray:
    opt = settings.optimizer()
    return np.array([learning_rate(step, opt) for step in range(settings.steps)])


def test_linear_schedule_warms_up_for_a_tenth_then_decays_to_zero():
    lrs = _schedule(TrainSettings(steps=100, lr=1e-3, lr_schedule="linear"))
    assert int(np.argmax(lrs)) == 9 and lrs[9] == pytest.approx(1e-3)       # step 9 is update 10 of 10
    assert (np.diff(lrs[:10]) > 0).all() and (np.diff(lrs[10:]) < 0).all()
    assert lrs[-1] == pytest.approx(1e-3 / 90)                               # the last update, then 0


def test_one_cycle_rises_to_the_peak_at_half_the_steps_and_falls_linearly_to_zero():
    settings = TrainSettings(steps=100, lr=2e-3, lr_schedule="one-cycle")
    assert settings.optimizer().warmup_steps == 50
    lrs = _schedule(settings)
    assert int(np.argmax(lrs)) == 49 and lrs[49] == pytest.approx(2e-3)
    np.testing.assert_allclose(np.diff(lrs[:50]), np.full(49, 2e-3 / 50))              # linear up, in equal steps
    np.testing.assert_allclose(np.diff(lrs[50:]), np.full(49, -2e-3 / 50))             # linear down, in equal steps
    assert lrs[-1] == pytest.approx(2e-3 / 50)
    # the same schedule as a linear one with half the steps of warm-up: one code path
    linear = TrainSettings(steps=100, lr=2e-3, lr_schedule="linear", warmup=50)
    np.testing.assert_allclose(lrs, _schedule(linear))


def test_schedule_on_a_0d_array_matches_the_python_int_path():
    opt = TrainSettings(steps=40, lr=3e-3, lr_schedule="one-cycle").optimizer()
    got = [float(learning_rate(np.asarray(step), opt)) for step in range(40)]
    np.testing.assert_allclose(np.array(got), np.array([learning_rate(step, opt) for step in range(40)]))


@pytest.fixture(scope="module")
def small_corpus_settings(corpus, tokenizer_cache, monkeypatch_module):
    monkeypatch_module.setenv("MINIBERT_CACHE", str(tokenizer_cache))
    return TrainSettings(config="tiny", corpus=(str(corpus),), vocab_size=1000, seq_len=32, batch_size=8, mask_rate=0.15)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _heldout_labels(data) -> np.ndarray:
    return np.concatenate([data.heldout.batch(0, i)["labels"] for i in range(data.heldout.batches_per_epoch)])


def test_training_masks_at_mask_rate_while_heldout_masks_15_percent_whatever_the_recipe(small_corpus_settings):
    base = pretrain.load_data(small_corpus_settings, None)
    other = pretrain.load_data(dataclasses.replace(small_corpus_settings, mask_rate=0.4, batch_size=16, seed=3), None)
    # held-out: the same text, the same masks, the same batches, whatever --mask-rate, --batch-size and --seed
    assert base.heldout.mask_prob == other.heldout.mask_prob == pretrain.EVAL_MASK_RATE == 0.15
    assert base.heldout.batch_size == other.heldout.batch_size
    np.testing.assert_array_equal(_heldout_labels(base), _heldout_labels(other))
    heldout = [base.heldout.batch(0, i) for i in range(base.heldout.batches_per_epoch)]
    assert abs(_picked_share(heldout, base.tokenizer) - 0.15) < 0.02
    # training: the asked rate
    assert base.train.mask_prob == 0.15 and other.train.mask_prob == 0.4
    for data, rate in ((base, 0.15), (other, 0.4)):
        assert abs(_picked_share([next(data.train) for _ in range(3)], data.tokenizer) - rate) < 0.03


def _picked_share(batches, tokenizer) -> float:
    """Labelled tokens / the tokens that could be masked (not special before masking: a [MASK] was a word)."""
    labels = np.concatenate([b["labels"] for b in batches])
    ids = np.concatenate([b["input_ids"] for b in batches])
    return float((labels != IGNORE_LABEL).sum() / ((~np.isin(ids, tokenizer.special_ids)) | (ids == tokenizer.mask_id)).sum())


def test_a_run_saved_before_the_recipe_flags_resumes_with_the_rate_and_schedule_it_was_trained_with(tmp_path):
    record = TrainSettings(mask_rate=0.4, lr_schedule="one-cycle").record()
    for name in ("mask_rate", "lr_schedule"):      # what config.json held before these flags existed
        del record[name]
    model = BertConfig.preset("seed").to_dict()
    (tmp_path / "config.json").write_text(json.dumps({"model": model, "training": record}))
    resumed = TrainSettings.resumed(tmp_path)
    assert (resumed.mask_rate, resumed.lr_schedule) == (0.15, "linear")
    assert TrainSettings.resumed(tmp_path, mask_rate=0.3).mask_rate == 0.3
