"""SpecAugment in the training loader: masks only inside each utterance, reproducible across workers and resume."""

import json

import pytest
import torch

from osum.config import ConfigError, load_config
from osum.data.loader import LoaderConfig, SpeechLoader
from osum.data.manifest import read_manifest
from osum.data.shards import pack_shards
from osum.data.spec_augment import SpecAugmentConfig, batch_generator, spec_augment


@pytest.fixture
def shards(tmp_path, tone_manifest):
    pack_shards(list(read_manifest(tone_manifest)), tmp_path / "shards", per_shard=4)
    return tmp_path / "shards" / "shards.list"


def config(augment=True, **kw):
    base = dict(num_workers=0, shuffle_buffer=8, max_frames_in_batch=800, seed=1,
                spec_augment=SpecAugmentConfig(enabled=augment, max_time_width=20))
    base.update(kw)
    return LoaderConfig(**base)


def test_masks_stay_inside_each_utterance_and_use_its_mean():
    features = torch.randn(3, 300, 80)
    lengths = torch.tensor([300, 120, 40])
    for row, n in enumerate(lengths.tolist()):
        features[row, n:] = 0.0  # padding, as log_mel_spectrogram leaves it
    before = features.clone()
    spec_augment(features, lengths, SpecAugmentConfig(enabled=True, max_time_width=30), batch_generator(0, 0, 0, 0))
    changed = features != before
    for row, n in enumerate(lengths.tolist()):
        assert not changed[row, n:].any(), "padding frames must never be touched"
        assert changed[row, :n].any(), f"row {row} got no mask"
        # every masked value is the utterance's own mean over its real frames
        assert torch.allclose(features[row, :n][changed[row, :n]], before[row, :n].mean().expand(1), atol=1e-6)
        # a time mask never covers more than max_time_ratio of the utterance: some frame keeps a real value
        frames_masked = changed[row, :n].all(dim=1).sum()
        assert frames_masked <= 2 * int(n * 0.2)


def test_same_place_same_masks_other_place_other_masks():
    base = torch.randn(2, 200, 80)
    lengths = torch.tensor([200, 150])
    cfg = SpecAugmentConfig(enabled=True)
    a = spec_augment(base.clone(), lengths, cfg, batch_generator(3, 1, 0, 7))
    b = spec_augment(base.clone(), lengths, cfg, batch_generator(3, 1, 0, 7))
    c = spec_augment(base.clone(), lengths, cfg, batch_generator(3, 2, 0, 7))  # next epoch
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_training_batches_are_masked_reproducibly_with_workers_and_resume(shards):
    plain = list(SpeechLoader([shards], config(augment=False)))
    masked = list(SpeechLoader([shards], config()))
    assert [b.keys for b in plain] == [b.keys for b in masked]  # masking changes features, never the plan
    assert any(not torch.equal(x.features, y.features) for x, y in zip(plain, masked))
    for x, y in zip(plain, masked):  # padding untouched
        assert torch.equal(x.features[~x.mask], y.features[~y.mask])

    pooled_loader = SpeechLoader([shards], config(num_workers=2))
    pooled = list(pooled_loader)
    pooled_loader.close()
    assert all(torch.equal(x.features, y.features) for x, y in zip(masked, pooled))

    first = SpeechLoader([shards], config())
    iterator = iter(first)
    for _ in range(2):
        next(iterator)
    resumed = SpeechLoader([shards], config())
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert all(torch.equal(x.features, y.features) for x, y in zip(list(resumed), masked[2:]))

    def per_sample(batches):
        return {k: b.features[i, : int(b.lengths[i])] for b in batches for i, k in enumerate(b.keys)}

    epoch1 = SpeechLoader([shards], config())
    epoch1.set_epoch(1)
    first_epoch, second_epoch = per_sample(masked), per_sample(epoch1)
    assert first_epoch.keys() == second_epoch.keys()
    differ = sum(not torch.equal(first_epoch[k], second_epoch[k]) for k in first_epoch)
    assert differ >= len(first_epoch) - 1  # a new view of (nearly) every sample each epoch


def test_config_from_yaml_and_bad_values_are_clear():
    c = load_config(LoaderConfig, None, ["spec_augment.enabled=true", "spec_augment.max_freq_width=27"])
    assert c.spec_augment.enabled and c.spec_augment.max_freq_width == 27
    with pytest.raises(ConfigError, match="max_time_wdth"):
        load_config(LoaderConfig, None, ["spec_augment.max_time_wdth=3"])
    with pytest.raises((ConfigError, ValueError), match="max_time_ratio"):
        load_config(LoaderConfig, None, ["spec_augment.max_time_ratio=2"])
