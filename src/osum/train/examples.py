"""A loader batch -> what the model learns from it: one task, one prompt and one target text per sample.

A sample tagged with several tasks (["asr", "gender"]) trains on one of them per epoch, chosen by a
generator seeded with (seed, epoch, key): the choice is the same on every rank and after a resume, and
every task comes up across epochs. Samples that cannot make a target for their task (a gender task with
no gender label) are dropped from the batch and counted, never trained on an empty label.

Besides the target texts, each batch carries what the model's auxiliary losses learn (`AuxiliaryTargets`),
read from the samples' own fields: the spoken transcript (the CTC head) and the index of each label the target
names (the utterance-label head, the weight of label tokens).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..data.loader import Batch
from ..data.problems import Problems
from ..models.speech_llm import AuxiliaryTargets
from ..prompt_set import PromptSet
from ..tasks import DEFAULT_TASK, canonical_task, format_target, label_indices, label_tags, spoken_transcript


@dataclass
class Examples:
    features: torch.Tensor
    lengths: torch.Tensor
    prompts: list[str]
    targets: list[str]
    tasks: list[str]
    keys: list[str]
    aux: AuxiliaryTargets | None = None  # the model's `forward(..., aux=...)`

    @property
    def size(self) -> int:
        return len(self.targets)


def make_examples(batch: Batch, prompts: PromptSet, seed: int, epoch: int, random_prompt: bool,
                  problems: Problems, only_task: str | None = None) -> Examples | None:
    """The batch's training examples (None when no sample of it can be used). `only_task`: the one task every
    sample trains on (a Whisper model: <TRANSCRIBE>) instead of one of the sample's own."""
    keep, chosen_prompts, targets, tasks, transcripts, labels = [], [], [], [], [], []
    for i, sample in enumerate(batch.samples):
        rng = random.Random(f"{seed}/task/{epoch}/{sample.key}")
        try:
            task = canonical_task(only_task or (rng.choice(sample.tasks) if sample.tasks else DEFAULT_TASK))
            target = format_target(sample, task, prompts.labels)
            prompt = prompts.pick(task, rng if random_prompt else None, language=sample.extra.get("target_language"))
        except ValueError as err:
            problems.add("no_target", sample.key, str(err))
            continue
        keep.append(i)
        chosen_prompts.append(prompt)
        targets.append(target)
        tasks.append(task)
        transcripts.append(spoken_transcript(sample, task))
        labels.append(label_indices(sample, task, prompts.labels))
    if not keep:
        return None
    index = torch.tensor(keep)
    lengths = batch.lengths[index]
    features = batch.features[index, : int(lengths.max())]
    aux = AuxiliaryTargets(transcripts, labels, label_tags(prompts.labels))
    return Examples(features, lengths, chosen_prompts, targets, tasks, [batch.keys[i] for i in keep], aux)
