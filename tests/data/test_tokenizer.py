"""SentencePiece tokenizer: special ids, padding/truncation, round-trip on the corpus."""

import numpy as np
import pytest

from wallwm_jax.data import captions
from wallwm_jax.data.tokenizer import Tokenizer, train_tokenizer
from wallwm_jax.envs.metaworld import DEMO_TASKS


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    train_tokenizer(captions.train_texts(DEMO_TASKS), str(path), vocab_size=512)
    return Tokenizer(str(path))


def test_round_trip_and_special_ids(tokenizer):
    assert tokenizer.pad_id == 0 and 4 < tokenizer.vocab_size <= 512
    for text in captions.train_texts(DEMO_TASKS)[:40]:
        ids = tokenizer.encode(text, 48)
        assert ids.dtype == np.int32 and ids.shape == (48,)
        n = int((ids != 0).sum())
        assert ids[0] == 1 and ids[n - 1] == 2 and not ids[n:].any()
        assert tokenizer.decode(ids) == text


def test_truncates_and_skips_bos_eos(tokenizer):
    ids = tokenizer.encode("push the puck to the goal", 3, bos=False, eos=False)
    assert ids.shape == (3,) and (ids > 3).all()


def test_heldout_wording_still_encodes(tokenizer):
    text = captions.instruction("push-v3", variant=0, split="heldout")
    assert tokenizer.decode(tokenizer.encode(text, 64)) == text


def test_missing_model_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        Tokenizer(str(tmp_path))
