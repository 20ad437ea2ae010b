"""Tokenizers: ``char`` (characters of the training split), ``bpe`` (byte-level BPE trained on the training
split with Hugging Face ``tokenizers``), ``gpt2`` (GPT-2's BPE from the hub, where reachable).

All share one small interface: ``encode(str) -> list[int]``, ``decode(list[int]) -> str``, ``vocab_size``,
``eos_id`` (the end-of-sequence token that separates documents), ``save(dir)`` and ``fingerprint``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from attnlab.data.corpus import DataError, pieces, segments
from attnlab.errors import ConfigError

EOS = "<|eos|>"
UNK = "<|unk|>"


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: list[str]):
        self.itos = [EOS, UNK] + [c for c in chars if c not in (EOS, UNK)]
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.eos_id, self.unk_id = 0, 1

    @classmethod
    def train(cls, texts) -> "CharTokenizer":
        chars = set()
        for text, _ in segments(texts):  # a part of a document at a time: never the corpus, nor a whole file
            chars |= set(text)
        return cls(sorted(chars))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        get = self.stoi.get
        return [get(c, self.unk_id) for c in text]  # characters unseen in training map to <unk>

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids) -> str:
        return "".join(self.itos[i] if i > 1 else ("\n\n" if i == 0 else "?") for i in ids)

    def save(self, directory: str | Path) -> None:
        _atomic_write(Path(directory) / "tokenizer.json", json.dumps({"kind": "char", "itos": self.itos[2:]}))

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256("\0".join(self.itos).encode()).hexdigest()[:12]

    def as_tokenizers_json(self) -> str:
        """The same ids as a ``tokenizers`` file (a word-level model whose words are the characters: every
        character its own piece, unseen ones <unk>, decoded by concatenation), which Hugging Face's
        ``PreTrainedTokenizerFast`` and ``tokenizers.Tokenizer`` read: what ``export.py`` writes for a char run."""
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
        tok = Tokenizer(models.WordLevel(dict(self.stoi), unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # each character
        tok.decoder = decoders.Fuse()
        tok.add_special_tokens([EOS, UNK])
        return tok.to_str()


class HFTokenizer:
    """Wraps a ``tokenizers.Tokenizer`` (BPE trained here, or GPT-2's)."""

    def __init__(self, tok, kind: str):
        self.tok, self.kind = tok, kind
        eos = tok.token_to_id(EOS)
        if eos is None:
            eos = tok.token_to_id("<|endoftext|>")
        if eos is None:
            raise DataError(f"tokenizer {kind!r} has no end-of-sequence token")
        self.eos_id = eos

    @classmethod
    def train_bpe(cls, texts, vocab_size: int) -> "HFTokenizer":
        """``texts``: any iterable of strings (a generator keeps a large corpus out of memory)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        if vocab_size < 257 + 1:
            raise ConfigError(f"tokenizer.vocab_size={vocab_size}: byte-level BPE needs at least 258 "
                             f"(256 bytes + special tokens)")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok, "bpe")

    @classmethod
    def gpt2(cls) -> "HFTokenizer":
        from tokenizers import Tokenizer
        try:
            return cls(Tokenizer.from_pretrained("gpt2"), "gpt2")
        except Exception as e:
            raise DataError(f"could not fetch the GPT-2 tokenizer from the Hugging Face hub ({type(e).__name__}). "
                            f"Offline, use tokenizer=bpe (trained locally) or tokenizer=char") from e

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # on every core; the ids alone, without character offsets: faster, less memory (tokenizers >= 0.21)
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        return [e.ids for e in encode(texts)]

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids))

    def save(self, directory: str | Path) -> None:
        _atomic_write(Path(directory) / "tokenizer.json", self.tok.to_str())

    def as_tokenizers_json(self) -> str:
        return self.tok.to_str()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.tok.to_str().encode()).hexdigest()[:12]


MAX_TOKENIZER_BYTES = 32 << 20  # GPT-2's tokenizer.json is 1.4 MB; a folder someone sent may hold anything


def load_tokenizer(directory: str | Path):
    from attnlab import plain_yaml
    path = Path(directory) / "tokenizer.json"
    try:  # bounded before parsing (36 MB of JSON cost 1 GB of memory), a regular file, not nested without end
        data = plain_yaml.load_json(path, MAX_TOKENIZER_BYTES)
    except plain_yaml.PlainYAMLError as e:
        raise DataError(f"{path}: {e} (more than a tokenizer holds: {MAX_TOKENIZER_BYTES:,} bytes at most)"
                        if "more than" in str(e) else f"{path}: {e}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a tokenizer (a JSON object)")
    if data.get("kind") == "char":
        return CharTokenizer(data["itos"])
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(json.dumps(data))
    return HFTokenizer(tok, "gpt2" if tok.token_to_id("<|endoftext|>") is not None else "bpe")


TOKENIZERS = ("char", "bpe", "gpt2")


def bounded(texts, max_bytes: int | None):
    """The texts, cut once ``max_bytes`` UTF-8 bytes have been given (None: all): a bounded sample for training
    a tokenizer on a large corpus, taken in order (the split is already shuffled by document or file)."""
    left = max_bytes
    for text in texts:
        if left is None:
            yield text
            continue
        if left <= 0:
            return
        raw = text.encode("utf-8")
        yield raw[:left].decode("utf-8", errors="ignore") if len(raw) > left else text
        left -= len(raw)


def build_tokenizer(kind: str, train_texts: list[str], vocab_size: int = 4096, train_bytes: int | None = None):
    if kind == "char":
        return CharTokenizer.train(train_texts)
    if kind == "bpe":
        # in pieces cut where the tokens do not change (the same merges): the trainer's memory grows with its
        # longest input (30 MB as one text: +2.6 GB; in pieces: nothing)
        texts = bounded((text for text, _ in segments(train_texts)), train_bytes)
        return HFTokenizer.train_bpe((p for text in texts for p in pieces(text)), vocab_size)
    if kind == "gpt2":
        return HFTokenizer.gpt2()
    raise ConfigError(f"unknown tokenizer {kind!r}; valid: {list(TOKENIZERS)}")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
