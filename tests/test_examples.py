"""train/examples.py: a loader batch -> prompts, target texts, and the auxiliary targets read from the samples."""

import torch

from osum.data.loader import Batch
from osum.data.problems import Problems
from osum.data.sample import Sample, Word
from osum.prompt_set import load_prompts
from osum.tasks import LABELS, label_tags
from osum.train.examples import make_examples


def batch_of(samples: list[Sample]) -> Batch:
    lengths = torch.tensor([100 + 10 * i for i in range(len(samples))])
    features = torch.randn(len(samples), int(lengths.max()), 80)
    return Batch([s.key for s in samples], samples, features, lengths, torch.arange(features.shape[1]) < lengths[:, None])


def test_examples_carry_each_samples_transcript_and_label_indices():
    words = [Word("good", 0.1, 0.4), Word("morning", 0.5, 0.9)]
    samples = [
        Sample("a", "a.wav", text="HELLO <noise> WORLD", gender="F", age="70", tasks=("<TRANSCRIBE> <AGE> <GENDER>",)),
        Sample("b", "b.wav", text="HELLO", gender="male", tasks=("<GENDER>",)),
        Sample("c", "c.wav", text="GOOD MORNING", words=words, tasks=("<TRANSCRIBE> <ALIGN>",)),
        Sample("d", "d.wav", text="HI", tasks=("<EMOTION>",)),  # no emotion label: dropped and counted
        Sample("e", "e.wav", text="HOW ARE YOU", gender="female", extra={"reply": "FINE <male>"},
               tasks=("<TRANSCRIBE> <S2TCHAT>",)),
        Sample("f", "f.wav", text="HI", extra={"translation": "SALUT", "target_language": "French"},
               tasks=("<TRANSLATE>",)),
    ]
    problems = Problems(warn=False)
    ex = make_examples(batch_of(samples), load_prompts(), seed=0, epoch=0, random_prompt=False, problems=problems)
    assert ex.keys == ["a", "b", "c", "e", "f"] and problems.summary() == {"no_target": 1}
    assert ex.targets == ["HELLO <noise> WORLD<old><female>", "<male>", "good<0.10,0.40> morning<0.50,0.90>",
                          "HOW ARE YOU<ANSWER>FINE <male>", "SALUT"]
    # The CTC head learns the spoken words; the utterance head the labels the target names, as indices.
    assert ex.aux.transcripts == ["HELLO WORLD", None, "good morning", "HOW ARE YOU", None]
    assert ex.aux.labels == [{"age": 2, "gender": 0}, {"gender": 1}, {}, {}, {}]
    assert ex.aux.label_tags == label_tags(LABELS)
    assert ex.features.shape[0] == 5 and ex.lengths.tolist() == [100, 110, 120, 140, 150]
