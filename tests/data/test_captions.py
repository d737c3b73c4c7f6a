"""Captions and instructions: enough paraphrases, and held-out wording never used in train."""

import pytest

from wallwm_jax.data import captions
from wallwm_jax.envs.metaworld import MT10_TASKS, PHASE_FNS, TASK_OBJECTS


def _all(split, fn):
    return {fn(task, phase, variant=v, split=split)
            for task in MT10_TASKS for phase in captions.PHASE_TEMPLATES
            for v in range(captions.num_variants(split))}


def test_every_template_has_six_distinct_paraphrases():
    for options in (*captions.PHASE_TEMPLATES.values(), *captions.INSTRUCTIONS.values()):
        assert len(set(options)) >= 6
    assert captions.num_variants("train") == 4 and captions.num_variants("heldout") >= 2


def test_every_task_has_objects_instructions_and_phase_captions():
    assert set(PHASE_FNS) <= set(TASK_OBJECTS) and set(PHASE_FNS) <= set(captions.INSTRUCTIONS)


def test_heldout_captions_never_appear_in_train():
    train = _all("train", captions.event_caption)
    heldout = _all("heldout", captions.event_caption)
    assert train and heldout and not train & heldout


def test_heldout_instructions_never_appear_in_train():
    train = {captions.instruction(t, variant=v) for t in MT10_TASKS for v in range(20)}
    heldout = {captions.instruction(t, variant=v, split="heldout")
               for t in MT10_TASKS for v in range(20)}
    assert len(train) == 4 * len(MT10_TASKS)
    assert not train & heldout
    assert set(captions.train_texts(MT10_TASKS)).isdisjoint(heldout)


def test_caption_fills_object_and_target():
    text = captions.event_caption("push-v3", "push", variant=0)
    assert "puck" in text and "goal" in text


def test_captioner_passed_explicitly_replaces_templates():
    model = lambda task, phase, variant, split: f"model:{task}:{phase}"  # noqa: E731
    assert captions.event_caption("push-v3", "reach", variant=0,
                                  captioner=model) == "model:push-v3:reach"
    assert captions.event_caption("push-v3", "reach", variant=0).startswith("move")  # no state
    assert captions.CaptionSource(model).event_caption("push-v3", "reach",
                                                       variant=0) == "model:push-v3:reach"
    assert captions.CaptionSource().event_caption("push-v3", "reach", variant=0).startswith("move")


def test_captions_and_tasks_import_without_the_simulator():
    import subprocess
    import sys

    code = ("import sys, wallwm_jax.data.captions, wallwm_jax.data.tasks; "
            "assert 'wallwm_jax.envs.metaworld' not in sys.modules; "
            "assert not any(m.split('.')[0] in ('metaworld', 'mujoco') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_split_and_phase_raise():
    with pytest.raises(ValueError, match="split"):
        captions.instruction("push-v3", variant=0, split="test")
    with pytest.raises(ValueError, match="phase"):
        captions.event_caption("push-v3", "dance", variant=0)
