"""Run by tests/test_distributed.py, under torchrun or alone: a few training steps of a tiny model,
then a (sharded) dev evaluation. Each rank saves what the test compares to OUT/rank<r>.pt.

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py CONFIG_JSON STEPS OUT [WEIGHTS]

CONFIG_JSON holds TrainConfig's fields. With WEIGHTS (a saved state dict), the evaluation runs
on those weights instead of the trained ones.
"""

import gc
import json
import sys
from pathlib import Path

import torch
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multitask.config import TrainConfig  # noqa: E402
from multitask.distributed import from_environment  # noqa: E402
from multitask.training import EpochProgress, Trainer  # noqa: E402


def counting_allreduce(state: dict, bucket):
    """DDP's own all-reduce, counting the backward passes that synchronised (one last bucket each)."""
    if bucket.is_last():
        state["synced_backward_passes"] += 1
    return default_hooks.allreduce_hook(None, bucket)


def main(config_json: str, steps: int, out: Path, weights: Path | None) -> None:
    torch.set_num_threads(1)  # the same arithmetic in every process of every run
    config = TrainConfig(**json.loads(config_json))
    distributed = from_environment(config.device)
    trainer = Trainer(config, log=lambda message: None, distributed=distributed)
    hook_state = {"synced_backward_passes": 0}
    if distributed.enabled:
        trainer.model.replicated_encoder.ddp.register_comm_hook(hook_state, counting_allreduce)
    plan = trainer.epoch_plan(1)[:steps]
    progress = EpochProgress(1)
    trainer.model.train()
    losses = []
    use_mnr = config.sts_head == "mnr"
    for tasks in plan:  # (one task a step, or with --mix-tasks several: a loss each)
        for loss, _ in trainer.train_step(tasks, use_mnr, progress):
            losses.append(float(distributed.sum_(loss.clone())))  # the global batch's loss
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    if weights is not None:
        trainer.model.load_state_dict(torch.load(weights, weights_only=True))
    metrics, predictions = trainer.evaluate()
    torch.save({"plan": plan, "losses": losses, "model": trainer.model.state_dict(), "metrics": metrics,
                "predictions": {t: torch.from_numpy(p) for t, p in predictions.items()},
                "grads": grads, "synced_backward_passes": hook_state["synced_backward_passes"],
                "real_tokens": progress.real_tokens, "grad_norms": dict(progress.grad_norms)},
               out / f"rank{distributed.rank}.pt")
    del trainer  # its DDP wrapper holds the process group: freed before the group, as training.train does
    gc.collect()
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]) if len(sys.argv) > 4 else None)
