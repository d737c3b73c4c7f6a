"""SentencePiece tokenizer for instructions and captions: trained per dataset and stored with
it, or a pretrained model's own (`data.tokenizer`, e.g. Gemma's 256k-piece tokenizer.model)."""

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
    """Fixed-length int32 token ids (0 = padding) from text, and back.

    Any SentencePiece model whose padding piece is id 0 works, whatever its size and its BOS/EOS
    ids (ours: 1/2; Gemma's: 2/1): `bos_id`/`eos_id` are what caption decoding starts and stops
    with. The model reads id 0 as padding everywhere, so another padding id is refused.
    """

    def __init__(self, model_path: str):
        if os.path.isdir(model_path):
            model_path = os.path.join(model_path, TOKENIZER_FILE)
        if not os.path.exists(model_path):
            raise FileNotFoundError(
                f"tokenizer model not found: expected {model_path}; it is written by the "
                "dataset builder next to dataset_info.json (or train one with train_tokenizer)")
        self.model_path = model_path
        try:
            self._sp = spm.SentencePieceProcessor(model_file=model_path)
        except (RuntimeError, OSError) as err:
            raise ValueError(f"tokenizer {model_path}: not a SentencePiece model "
                             f"({' '.join(str(err).split())})") from None
        self.pad_id = self._sp.pad_id()
        if self.pad_id != PAD_ID:
            raise ValueError(
                f"tokenizer {model_path}: its padding id is {self.pad_id}, expected {PAD_ID} "
                "(the model reads token id 0 as padding; Gemma's tokenizer and the builders' "
                "have <pad> at 0)")
        self.bos_id, self.eos_id = self._sp.bos_id(), self._sp.eos_id()
        if self.bos_id < 0 or self.eos_id < 0:
            raise ValueError(f"tokenizer {model_path}: expected BOS and EOS pieces, got ids "
                             f"bos={self.bos_id} eos={self.eos_id}")
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
        specials = {self.pad_id, self.bos_id, self.eos_id}
        size = self._sp.get_piece_size()
        return self._sp.decode([int(i) for i in np.asarray(ids).ravel()
                                if int(i) not in specials and 0 <= int(i) < size])
