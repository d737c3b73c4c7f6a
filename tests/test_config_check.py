"""`config_check.validate`: every shipped config passes; a bad field is named with its value and
what was expected, before any data or device is touched."""

import pytest

from experiments.pretrain import get_config
from wallwm_jax import cli, config_check


@pytest.mark.parametrize("size", ["tiny", "small", "base", "large"])
@pytest.mark.parametrize("mode", ["event", "unified", "chunk"])
def test_shipped_configs_pass(size, mode):
    config_check.validate(get_config(f"size={size},mode={mode}"), check_data=False)


@pytest.mark.parametrize("mode", ["event", "unified", "chunk"])
def test_demo_recipe_is_the_demo_config(mode):
    """`recipe=demo` and the demo's default flags give the same config, so the README's
    command and the recipe a user trains with are one; `recipe=demo` is `recipe=cpu` (the
    studies') with the three fields docs/demo.md gives."""
    from absl import flags

    from wallwm_jax import demo

    recipe = get_config(f"size=tiny,mode={mode},recipe=demo")
    config_check.validate(recipe, check_data=False)
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["demo", "--workdir=/unused"])
    try:
        config = demo.demo_config("/data", mode)
    finally:
        flags.FLAGS.unparse_flags()
    config.data.data_dir = recipe.data.data_dir
    config.log_every_steps = recipe.log_every_steps
    assert config.to_dict() == recipe.to_dict()
    assert recipe.data.privileged_state and recipe.model.state_dim == 10
    cpu = get_config(f"size=tiny,mode={mode},recipe=cpu").to_dict()
    demo_only = {("data", "action_target_gain"): (0.0, 10.0),
                 ("data", "max_event_len"): (16, 8),
                 ("model", "max_event_len"): (16, 8),
                 ("data", "augment", "enabled"): (True, False)}

    def leaves(tree, path=()):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, (*path, key))
            else:
                yield (*path, key), value

    want, got = dict(leaves(cpu)), dict(leaves(recipe.to_dict()))
    assert {k for k in want if want[k] != got[k]} == set(demo_only)
    assert {k: (want[k], got[k]) for k in demo_only} == demo_only
    assert get_config(f"size=tiny,mode={mode}").data.privileged_state is False


@pytest.mark.parametrize("field,value,message", [
    ("optimizer.name", "adam", "config.optimizer.name='adam': expected one of 'adamw', 'muon'"),
    ("optimizer.learning_rate", 0.0, "config.optimizer.learning_rate=0.0: expected a number > 0"),
    ("batch_size", 0, "config.batch_size=0: expected an integer >= 1"),
    ("eval.episodes_per_task", 0, "config.eval.episodes_per_task=0: expected an integer >= 1"),
    ("data.image_size", 4, "smaller than one patch"),
    ("data.balance_alpha", -1.0, "config.data.balance_alpha=-1.0: expected a number >= 0"),
    ("data.layout", "chunk", "config.mode='event' but config.data.layout='chunk'"),
    ("model.remat_policy", "some", "config.model.remat_policy='some': expected one of 'none'"),
    ("model.vision_stem", "resnet", "config.model.vision_stem='resnet': expected one of 'none'"),
    ("model.cameras", 2, "config.model.cameras=2 but config.data.cameras has 1"),
    ("mesh.fsdp", 0, "axis sizes >= 1, or -1"),
    ("checkpoint.every_steps", 0, "config.checkpoint.every_steps=0: expected an integer >= 1"),
    ("init_from", "/no/such/run", "config.init_from='/no/such/run' does not exist"),
    ("on_nonfinite", "ignore", "config.on_nonfinite='ignore': expected one of 'stop', 'skip'"),
    ("data.read_ahead", -1, "config.data.read_ahead=-1: expected an integer >= 0"),
    ("data.action_target_gain", -10.0,
     "config.data.action_target_gain=-10.0: expected a number >= 0"),
    ("data.action_target_gain", float("nan"), "config.data.action_target_gain=nan: expected a "
     "finite number"),
    ("model.aux_action_weight", -1.0, "config.model.aux_action_weight=-1.0: expected a number "
     ">= 0"),
    ("model.aux_action_weight", float("nan"), "config.model.aux_action_weight=nan: expected a "
     "finite number"),
])
def test_a_bad_field_is_named(field, value, message):
    config = get_config("size=tiny,mode=event")
    *parents, leaf = field.split(".")
    node = config
    for part in parents:
        node = node[part]
    setattr(node, leaf, value)
    with pytest.raises(cli.UserError) as err:
        config_check.validate(config, check_data=False)
    assert message in str(err.value)


def test_fields_are_checked_before_the_dataset():
    config = get_config("size=tiny,mode=event")
    config.optimizer.name = "adam"
    config.data.data_dir = "/no/such/dataset"
    with pytest.raises(cli.UserError, match="optimizer.name"):
        config_check.validate(config)


def test_dataset_dir_messages(tmp_path):
    (tmp_path / "metaworld_events" / "demo-e2-i32-s0" / "1.0.0").mkdir(parents=True)
    version = tmp_path / "metaworld_events" / "demo-e2-i32-s0" / "1.0.0"
    with pytest.raises(cli.UserError, match="holds no built dataset .* it holds: "
                                            "metaworld_events"):
        config_check.check_dataset_dir(str(tmp_path))
    (version / "dataset_info.json").write_text("{}")
    config_check.check_dataset_dir(str(version))
    with pytest.raises(cli.UserError, match=f"datasets below it: {version}"):
        config_check.check_dataset_dir(str(tmp_path))
    with pytest.raises(cli.UserError, match="is not set: pass --config.data.data_dir=DIR"):
        config_check.check_dataset_dir("")


def test_model_choices_match_the_models():
    """config_check keeps its own copies of the vision tower's choices (so a config error comes
    before any JAX import); they must be the tower's."""
    from wallwm_jax import config_check
    from wallwm_jax.models import vit

    assert config_check.VISION_READOUTS == vit.READOUTS
    assert config_check.VISION_STEMS == vit.STEMS
