"""Fine-tuning from an export: init_from reads the safetensors bundle, frozen parts stay
bitwise as exported while the rest trains, the export's tokenizer and stats are used."""

import jax
import numpy as np
import pytest

from experiments.finetune import get_config
from wallwm_jax.export import flat_names, load_bundle
from wallwm_jax.optim.freeze import frozen_mask
from wallwm_jax.train import train_and_evaluate


def test_finetune_freezes_vit_and_backbone(trained_policies, tiny_dataset, tmp_path):
    export = trained_policies["event"].export
    config = get_config(f"export={export},data={tiny_dataset},freeze=vit+backbone")
    config.total_steps, config.batch_size, config.checkpoint.every_steps = 2, 8, 2
    config.optimizer.warmup_steps = 1
    config.optimizer.learning_rate = 1e-2  # large, so every trainable leaf visibly moves
    assert config.data.tokenizer == f"{export}/tokenizer.model"
    result = train_and_evaluate(config, str(tmp_path / "ft"))
    before = flat_names(load_bundle(export)[0])
    after = flat_names(result["params"])
    frozen = flat_names(frozen_mask(result["params"], ("vit", "backbone")))
    assert any(k.startswith("vit/") for k, f in frozen.items() if f)
    assert any("/backbone/" in k for k, f in frozen.items() if f)
    moved = []
    for name, is_frozen in frozen.items():
        a, b = np.asarray(before[name]), np.asarray(jax.device_get(after[name]))
        if is_frozen:
            assert a.tobytes() == b.tobytes(), f"frozen {name} changed"
        elif not np.array_equal(a, b):
            moved.append(name)
    trainable = [n for n, f in frozen.items() if not f]
    assert "action_out/kernel" in moved and len(moved) >= len(trainable) // 2


def test_unknown_freeze_part_is_named(trained_policies, tmp_path):
    config = get_config(f"export={trained_policies['event'].export},freeze=vit+decoder")
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['decoder'\]"):
        train_and_evaluate(config, str(tmp_path / "bad"))
