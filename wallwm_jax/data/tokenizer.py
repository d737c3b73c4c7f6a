"""SentencePiece tokenizer for instructions and captions, trained per dataset and stored with it."""

from __future__ import annotations

import io
import os

import numpy as np
import sentencepiece as spm

TOKENIZER_FILE = "tokenizer.model"
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3


def train_tokenizer(texts: list[str], model_path: str, vocab_size: int = 512) -> str:
    """Train a unigram SentencePiece model on `texts` and write it to `model_path`.

    `hard_vocab_limit=False` lets a small corpus (a few hundred sentences) produce fewer
    pieces than `vocab_size` instead of failing.
    """
    if not texts:
        raise ValueError("cannot train a tokenizer on an empty corpus")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
        pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
        hard_vocab_limit=False, character_coverage=1.0, model_type="unigram",
        minloglevel=2)
    os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
    tmp = f"{model_path}.tmp"
    with open(tmp, "wb") as f:
        f.write(model.getvalue())
    os.replace(tmp, model_path)  # atomic: a crash never leaves a half-written model
    return model_path


class Tokenizer:
    """Fixed-length int32 token ids (0 = padding) from text, and back."""

    def __init__(self, model_path: str):
        if os.path.isdir(model_path):
            model_path = os.path.join(model_path, TOKENIZER_FILE)
        if not os.path.exists(model_path):
            raise FileNotFoundError(
                f"tokenizer model not found: expected {model_path}; it is written by the "
                "dataset builder next to dataset_info.json (or train one with train_tokenizer)")
        self.model_path = model_path
        self._sp = spm.SentencePieceProcessor(model_file=model_path)
        self.pad_id = self._sp.pad_id()
        self.vocab_size = self._sp.get_piece_size()

    def encode(self, text: str, max_len: int, *, bos: bool = True, eos: bool = True) -> np.ndarray:
        """int32[max_len]: [BOS] pieces [EOS], truncated to max_len, then 0-padded."""
        ids = self._sp.encode(text, add_bos=bos, add_eos=eos)[:max_len]
        out = np.full((max_len,), self.pad_id, np.int32)
        out[: len(ids)] = ids
        return out

    def decode(self, ids) -> str:
        """Text of `ids`, ignoring padding, BOS, EOS and ids past the tokenizer's vocabulary
        (the model's embedding table is usually padded larger, so a model can emit them)."""
        specials = {self.pad_id, self._sp.bos_id(), self._sp.eos_id()}
        size = self._sp.get_piece_size()
        return self._sp.decode([int(i) for i in np.asarray(ids).ravel()
                                if int(i) not in specials and 0 <= int(i) < size])
