"""A loader batch -> what the model learns from it: one task, one prompt and one target text per sample.

A sample tagged with several tasks (["asr", "gender"]) trains on one of them per epoch, chosen by a
generator seeded with (seed, epoch, key): the choice is the same on every rank and after a resume, and
every task comes up across epochs. Samples that cannot make a target for their task (a gender task with
no gender label) are dropped from the batch and counted, never trained on an empty label.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..data.loader import Batch
from ..data.problems import Problems
from ..prompt_set import PromptSet
from ..tasks import canonical_task, format_target


@dataclass
class Examples:
    features: torch.Tensor
    lengths: torch.Tensor
    prompts: list[str]
    targets: list[str]
    tasks: list[str]
    keys: list[str]

    @property
    def size(self) -> int:
        return len(self.targets)


def make_examples(batch: Batch, prompts: PromptSet, seed: int, epoch: int, random_prompt: bool,
                  problems: Problems, only_task: str | None = None) -> Examples | None:
    """The batch's training examples (None when no sample of it can be used). `only_task`: the one task every
    sample trains on (a Whisper model: <TRANSCRIBE>) instead of one of the sample's own."""
    keep, chosen_prompts, targets, tasks = [], [], [], []
    for i, sample in enumerate(batch.samples):
        rng = random.Random(f"{seed}/task/{epoch}/{sample.key}")
        try:
            task = canonical_task(only_task or (rng.choice(sample.tasks) if sample.tasks else "<TRANSCRIBE>"))
            target = format_target(sample, task, prompts.labels)
            prompt = prompts.pick(task, rng if random_prompt else None, language=sample.extra.get("target_language"))
        except ValueError as err:
            problems.add("no_target", sample.key, str(err))
            continue
        keep.append(i)
        chosen_prompts.append(prompt)
        targets.append(target)
        tasks.append(task)
    if not keep:
        return None
    index = torch.tensor(keep)
    lengths = batch.lengths[index]
    features = batch.features[index, : int(lengths.max())]
    return Examples(features, lengths, chosen_prompts, targets, tasks, [batch.keys[i] for i in keep])
