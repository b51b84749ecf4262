"""Born-again multitask training: single-task teachers, one multitask student (--teachers).

Clark, Luong, Khandelwal, Manning & Le 2019, "BAM! Born-Again Multi-Task Networks for Natural
Language Understanding": a multitask model trained on its single-task models' predictions, with
"teacher annealing", ends above those single-task models. Each training example's target is

    target = share * gold + (1 - share) * teacher            share = steps done / all steps

so the student starts by imitating its teachers and ends on the gold labels alone. What the
teachers add is their full predictions: SST's five class probabilities instead of one class,
QQP's probability instead of 0 or 1, STS's score where the label is one annotator mean. The
student's own losses take the mixed targets unchanged:

    sst  gold one-hot (B, 5), teacher softmax (B, 5)  -> cross-entropy with probability targets
    qqp  gold 0 or 1 (B,),    teacher sigmoid (B,)    -> binary cross-entropy with soft targets
    sts  gold score (B,),     teacher score (B,)      -> the STS head's own loss (0-5 scale)

A teacher is a trained run (its best/ checkpoint), evaluated without dropout; each step costs
one more forward pass, the teacher's, of the step's batch. The teachers must read the batch as
the student lays it out (multitask/heads.py, `layouts`: the same kind of STS head and the same
paraphrase head) with the same vocabulary, and score STS on the 0-5 scale, which the dot head
does not.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from bert import BertTokenizer, CheckpointError
from multitask import checkpoint
from multitask.batching import Batch
from multitask.config import TrainConfig
from multitask.heads import NUM_SENTIMENTS, MultitaskBert, layouts


def mix_targets(gold: torch.Tensor, teacher: torch.Tensor, share: float) -> torch.Tensor:
    """share * gold + (1 - share) * teacher, in float32. For SST, `gold` holds class indices (B,)
    and `teacher` class probabilities (B, 5): the gold side becomes one-hot rows first."""
    if teacher.dim() == 2:  # SST: classes
        gold = F.one_hot(gold.long(), NUM_SENTIMENTS)  # (B, 5)
    return share * gold.float() + (1.0 - share) * teacher.float()


READS = {"joint": "a pair as one input", "separate": "each sentence of a pair alone"}  # for messages


def head_of(config: TrainConfig, task: str) -> str:
    """A pair task's head in words, for messages: "STS head is concat"."""
    return f"STS head is {config.sts_head}" if task == "sts" else f"paraphrase head is {config.paraphrase_head}"


def find_teachers(folders: dict[str, str]) -> dict[str, Path]:
    """Each teacher's checkpoint folder (its run folder's best/, or the folder itself). Cheap, so
    the command line checks it before any data is read; CheckpointError names the flag."""
    found = {}
    for task, folder in folders.items():
        try:
            found[task] = checkpoint.find_checkpoint(folder)
        except CheckpointError as err:
            raise CheckpointError(f"--teachers {task}={folder}: {err}") from None
    return found


class Teachers:
    """Each distilled task's teacher model, and the targets it gives a batch."""

    def __init__(self, folders: dict[str, str], student: TrainConfig, student_tokenizer: BertTokenizer,
                 device: torch.device):
        self.models: dict[str, MultitaskBert] = {}
        student_layouts = layouts(student.sts_head, student.paraphrase_head)
        for task, found in find_teachers(folders).items():
            model, tokenizer, config, _ = checkpoint.load(found, device)
            where = f"--teachers {task}={folders[task]}"  # each message names the flag as given
            if task not in config.task_names:
                raise CheckpointError(f"{where}: that run did not train {task} (it trained "
                                      f"{config.tasks}); give a run that did")
            if (tokenizer.backend.get_vocab(), tokenizer.settings) != (student_tokenizer.backend.get_vocab(),
                                                                       student_tokenizer.settings):
                raise CheckpointError(f"{where}: its tokenizer differs from the student's, so it would read "
                                      f"the batches as other words; give a teacher trained from the same checkpoint")
            if task == "sts" and config.sts_head == "dot":
                raise CheckpointError(f"{where}: its STS head is dot; a teacher's STS score must be on the "
                                      f"0-5 scale, which the dot head's raw product is not")
            layout = layouts(config.sts_head, config.paraphrase_head)[task]
            if layout != student_layouts[task]:
                raise CheckpointError(
                    f"{where}: its {head_of(config, task)}, which reads {READS[layout]}, but the student's "
                    f"{head_of(student, task)}, which reads {READS[student_layouts[task]]}; "
                    f"a teacher must read the batches as the student lays them out (STS: concat with concat, "
                    f"cosine or mnr with cosine or mnr; paraphrase: the same --paraphrase-head)")
            self.models[task] = model.eval().requires_grad_(False)  # targets only: no dropout, no gradient

    @torch.no_grad()
    def relabel(self, batch: Batch, share: float) -> Batch:
        """`batch` with its labels replaced by the annealed targets (unchanged for a task without
        a teacher). `share` is the part of the run already trained, in [0, 1]."""
        teacher = self.models.get(batch.task)
        if teacher is None:
            return batch
        predicted = teacher.predict(batch)  # (B, 5) probabilities, (B,) probability or (B,) score
        return dataclasses.replace(batch, labels=mix_targets(batch.labels, predicted, share))
