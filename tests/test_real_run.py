"""A short real run: the offline all-MiniLM-L6-v2 checkpoint on the shared CS224N data.

A few hundred batches on the CPU must beat the untrained model (the same encoder with freshly
initialised heads) on all three dev sets. Slow (a few minutes on 2 cores): marked so, and run by
the default test command all the same.
"""

import json

import pytest

from multitask.config import TrainConfig
from multitask.training import EpochProgress, Trainer


@pytest.mark.slow
def test_short_minilm_run_beats_the_untrained_model(shared_data_dir, minilm_dir, tmp_path):
    config = TrainConfig(model="sentence-transformers/all-MiniLM-L6-v2", data_dir=str(shared_data_dir),
                         out_dir=str(tmp_path), sampler="annealed", sts_head="concat", epochs=1,
                         batches_per_epoch=200, lr=5e-5, device="cpu", progress=False, save_every=None)
    trainer = Trainer(config, log=print)
    untrained, _ = trainer.evaluate()
    record = trainer.train_epoch(EpochProgress(epoch=1))
    trained, _ = trainer.evaluate()
    print("untrained", json.dumps(untrained), "\ntrained", json.dumps(trained), "\n", json.dumps(record))
    for metric in ("sst_acc", "qqp_acc", "sts_corr"):
        assert trained[metric] > untrained[metric] + 0.02, metric
