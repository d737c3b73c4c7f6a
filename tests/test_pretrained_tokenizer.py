"""A pretrained model's tokenizer as the project's (`data.tokenizer`): a SentencePiece model laid
out as Gemma's (257,216 pieces; pad 0, eos 1, bos 2, unk 3) is checked before compiling, read by
the input pipeline and used by caption decoding, with a model whose vocabulary covers it."""

from __future__ import annotations

import os
import struct

import jax
import numpy as np
import pytest

from wallwm_jax.cli import UserError
from wallwm_jax.data.tokenizer import Tokenizer

GEMMA_VOCAB = 257_216
GEMMA_PAD, GEMMA_EOS, GEMMA_BOS, GEMMA_UNK = 0, 1, 2, 3
WORDS = ("reach", "push", "the", "puck", "to", "goal", "move", "gripper", "press", "button")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _bytes(number: int, payload: bytes) -> bytes:
    return _field(number, 2) + _varint(len(payload)) + payload


def _int(number: int, value: int) -> bytes:
    return _field(number, 0) + _varint(value)


def write_sentencepiece(path: str, *, vocab: int, pad: int | None = GEMMA_PAD) -> str:
    """Write a unigram SentencePiece ModelProto by hand (the installed protobuf runtime cannot
    load sentencepiece's generated module): Gemma's special ids, byte fallback, filler pieces
    first and the task words last, so their ids are near the top of the vocabulary."""
    normal, unknown, control, byte = 1, 2, 3, 6

    def piece(text: str, score: float, kind: int) -> bytes:
        body = _bytes(1, text.encode()) + _field(2, 5) + struct.pack("<f", score) + _int(3, kind)
        return _bytes(1, body)

    specials = [("<pad>", control), ("<eos>", control), ("<bos>", control), ("<unk>", unknown)]
    if pad is None:  # no padding piece at all (as some LLM tokenizers ship)
        specials[0] = ("<unused0>", normal)
    pieces = [piece(text, 0.0, kind) for text, kind in specials]
    pieces += [piece(f"<0x{b:02X}>", 0.0, byte) for b in range(256)]
    tail = [piece("\u2581" + w, -1.0, normal) for w in WORDS]
    tail += [piece(c, -5.0, normal) for c in "abcdefghijklmnopqrstuvwxyz-"] + [
        piece("\u2581", -4.0, normal)]
    filler = vocab - len(pieces) - len(tail)
    pieces += [piece(f"\u2581zz{i}", -30.0, normal) for i in range(filler)] + tail
    trainer = (_int(3, 1) + _int(4, vocab) + _int(35, 1) + _int(40, GEMMA_UNK)
               + _int(41, GEMMA_BOS) + _int(42, GEMMA_EOS)
               + _bytes(45, b"<unk>") + _bytes(46, b"<bos>") + _bytes(47, b"<eos>"))
    trainer += _bytes(48, b"<pad>") + _int(43, GEMMA_PAD) if pad is not None else b""
    normalizer = _bytes(1, b"identity") + _int(3, 1) + _int(4, 1) + _int(5, 1)
    with open(path, "wb") as f:
        f.write(b"".join(pieces) + _bytes(2, trainer) + _bytes(3, normalizer))
    return path


@pytest.fixture(scope="module")
def gemma_tokenizer(tmp_path_factory) -> str:
    return write_sentencepiece(str(tmp_path_factory.mktemp("gemma_tok") / "tokenizer.model"),
                               vocab=GEMMA_VOCAB)


def test_tokenizer_reads_a_gemma_layout_model(gemma_tokenizer):
    tok = Tokenizer(gemma_tokenizer)
    assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (GEMMA_VOCAB, 0, 2, 1)
    ids = tok.encode("push the puck to the goal", 16)
    n = int(np.sum(ids != 0))
    assert ids[0] == GEMMA_BOS and ids[n - 1] == GEMMA_EOS
    assert np.all(ids[1:n - 1] > GEMMA_VOCAB - 64)  # the task words sit at the top
    assert tok.decode(ids) == "push the puck to the goal"


def test_tokenizer_without_padding_at_zero_is_refused(tmp_path):
    path = write_sentencepiece(str(tmp_path / "nopad.model"), vocab=600, pad=None)
    with pytest.raises(ValueError, match=r"nopad\.model: its padding id is -1, expected 0"):
        Tokenizer(path)
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"junk\.model: not a SentencePiece model"):
        Tokenizer(str(junk))


def _config(data_dir: str, tokenizer: str, *, mode: str = "unified", vocab: int = GEMMA_VOCAB):
    from experiments.pretrain import get_config

    config = get_config(f"size=tiny,mode={mode}")
    config.data.data_dir = data_dir
    config.data.image_size = 32
    config.data.tokenizer = tokenizer
    config.model.vocab_size = vocab
    config.batch_size = 2
    return config


def test_config_check_names_a_vocabulary_too_small_for_the_tokenizer(tiny_dataset,
                                                                    gemma_tokenizer, tmp_path):
    from wallwm_jax import config_check

    config_check.validate(_config(tiny_dataset, gemma_tokenizer))  # fits: no error
    with pytest.raises(UserError, match=r"model.vocab_size=512 is smaller than "
                       r"config.data.tokenizer .*257216 pieces"):
        config_check.validate(_config(tiny_dataset, gemma_tokenizer, vocab=512))
    with pytest.raises(UserError, match=r"config.data.tokenizer: tokenizer model not found"):
        config_check.validate(_config(tiny_dataset, str(tmp_path / "missing.model")))


def test_pipeline_and_unified_policy_use_the_configured_tokenizer(tiny_dataset,
                                                                  gemma_tokenizer):
    from wallwm_jax.data.pipeline import make_pipeline, to_event_batch
    from wallwm_jax.models.wallwm import init_params
    from wallwm_jax.policy import Policy

    config = _config(tiny_dataset, gemma_tokenizer)
    pipeline = make_pipeline(config.data, global_batch=2, seed=0)
    assert pipeline.tokenizer_path == gemma_tokenizer and pipeline.vocab_size == GEMMA_VOCAB
    batch = to_event_batch(next(iter(pipeline.iterator)))
    instruction, caption = np.asarray(batch.obs.instruction), np.asarray(batch.obs.caption)
    for ids in (instruction[:, 0], caption[:, 0, 0]):
        assert np.all(ids == GEMMA_BOS)  # our builders' tokenizer would start with 1
    assert instruction.max() > GEMMA_VOCAB - 64  # words from the configured tokenizer

    params = init_params(config.model, jax.random.PRNGKey(0))
    assert params["embedder"]["embedding"].shape[0] == GEMMA_VOCAB
    policy = Policy(params, config, pipeline.norm_stats, gemma_tokenizer, mode="unified")
    out = policy.act(np.zeros((32, 32, 3), np.uint8), np.zeros(4, np.float32),
                     "push the puck to the goal")
    assert out["caption_ids"].shape[0] >= 1
    assert np.all(out["caption_ids"][:, 0] == GEMMA_BOS)  # decoding starts at the model's BOS
    assert os.path.basename(policy.tokenizer.model_path) == "tokenizer.model"
