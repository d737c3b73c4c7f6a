"""config_args.parse_config_arg, the one `key=value,...` parser of every config file: values
take their default's type, and a bad switch is refused naming the key or value at fault."""

import re

import pytest

from wallwm_jax.config_args import parse_config_arg

DEFAULTS = {"size": "tiny", "scratch": False, "steps": 3, "lr": 1e-3}


def test_defaults_when_arg_is_empty():
    for arg in (None, "", ","):
        assert parse_config_arg(arg, DEFAULTS) == DEFAULTS


def test_values_take_the_type_of_their_default():
    out = parse_config_arg("size=small,scratch=1,steps=12,lr=3e-4", DEFAULTS)
    assert out == {"size": "small", "scratch": True, "steps": 12, "lr": 3e-4}
    assert type(out["steps"]) is int and type(out["lr"]) is float
    for text, value in (("0", False), ("", False), ("False", False), ("yes", True)):
        assert parse_config_arg(f"scratch={text}", DEFAULTS)["scratch"] is value


def test_value_may_hold_an_equals_sign_and_last_repeat_wins():
    out = parse_config_arg("size=a=b,size=small", DEFAULTS)
    assert out["size"] == "small"
    assert parse_config_arg("size=a=b", DEFAULTS)["size"] == "a=b"


def test_defaults_are_not_mutated():
    defaults = dict(DEFAULTS)
    parse_config_arg("size=small", defaults)
    assert defaults == DEFAULTS


def test_unknown_key_is_named_with_the_keys_accepted():
    message = ("config arg 'sise=small': unknown key 'sise'; expected key=value with key in "
               "['lr', 'scratch', 'size', 'steps']")
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_config_arg("size=tiny,sise=small", DEFAULTS)


def test_item_without_equals_sign_is_refused():
    with pytest.raises(ValueError, match=re.escape("config arg 'small': expected key=value")):
        parse_config_arg("small", DEFAULTS)


@pytest.mark.parametrize("arg,message", [
    ("scratch=maybe", "config arg scratch='maybe': expected a bool (1/0, true/false, yes/no)"),
    ("steps=1.5", "config arg steps='1.5': expected an integer"),
    ("lr=fast", "config arg lr='fast': expected a number"),
])
def test_bad_value_is_named_with_the_type_expected(arg, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_config_arg(arg, DEFAULTS)


def test_value_outside_its_choices_is_named():
    with pytest.raises(ValueError, match=re.escape(
            "config arg size='huge' is not one of ['small', 'tiny']")):
        parse_config_arg("size=huge", DEFAULTS, {"size": ("tiny", "small")})


def test_config_files_share_the_parser():
    """pretrain.py, mt50.py and finetune.py keep their switches and defaults, and refuse a
    bad one with the parser's message (finetune's before any export is read)."""
    from experiments.finetune import get_config as finetune_config
    from experiments.mt50 import get_config as mt50_config
    from experiments.pretrain import get_config as pretrain_config

    config = pretrain_config()
    assert (config.size, config.mode) == ("tiny", "event")
    assert pretrain_config("recipe=cpu,size=tiny,mode=chunk").total_steps == 1500
    config = mt50_config()
    assert (config.size, config.mode) == ("small", "unified")
    for get_config, arg in ((pretrain_config, "sise=tiny"), (mt50_config, "sise=small"),
                            (finetune_config, "export=/nonexistent,sise=1")):
        with pytest.raises(ValueError, match="unknown key 'sise'"):
            get_config(arg)
    with pytest.raises(ValueError, match="config arg mode='evnt' is not one of"):
        pretrain_config("mode=evnt")
    with pytest.raises(ValueError, match="config arg scratch='maybe': expected a bool"):
        finetune_config("export=/nonexistent,scratch=maybe")
    with pytest.raises(ValueError, match="needs export=DIR"):
        finetune_config("scratch=1")
