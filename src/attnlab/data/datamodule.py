"""The LightningDataModule: corpus -> tokenizer -> cached token arrays -> (input, target) windows."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from attnlab.data import cache
from attnlab.data import sources
from attnlab.data.corpus import SPLITS, DataError, pieces, segments
from attnlab.data.tokenizers import build_tokenizer, load_tokenizer
from attnlab.errors import ConfigError

log = logging.getLogger(__name__)
IGNORE = -100  # target id ignored by the loss (already-counted positions of the last eval window)


BATCH_CHARS = 1 << 24  # characters encoded at once: enough pieces for the batch encoder to keep every core busy
ENCODE_BATCH = 256  # at most this many pieces at once: more keeps no more cores busy, only more memory
# (measured on an 85 MB file: 1024 pieces +765 MB of RSS, 256 pieces +362 MB, the same speed)


class TokenisingProgress:
    """Progress of a long tokenisation: a Rich bar (MB, MB/s, time left) on a terminal, else a log line every
    10 s (a log file or CI has no use for a redrawn bar). ``total``: bytes of text expected (0: unknown)."""
    clock = staticmethod(time.monotonic)

    def __init__(self, label: str, total: int):
        from rich.console import Console
        self.label, self.total, self.done = label, total, 0
        self.started = self.shown = self.clock()
        console = Console(stderr=True)
        self.bar = None
        if console.is_terminal:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)
            self.bar = Progress(TextColumn("tokenising {task.description}"), BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True)
            self.task = self.bar.add_task(label, total=total or None)

    def __enter__(self) -> "TokenisingProgress":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def advance(self, size: int) -> None:
        self.done += size
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
            return
        now = self.clock()
        if now - self.shown >= 10:
            rate = self.done / (now - self.started)
            if self.done < self.total:
                log.info("tokenising %s: %.0f of %.0f MB, %.1f MB/s, about %.0f s left", self.label, self.done / 1e6,
                         self.total / 1e6, rate / 1e6, (self.total - self.done) / max(rate, 1))
            else:
                log.info("tokenising %s: %.0f MB so far, %.1f MB/s", self.label, self.done / 1e6, rate / 1e6)
            self.shown = now


def write_tokens(tokenizer, docs, path: Path, dtype, label: str = "") -> tuple[int, int]:
    """Encode ``docs`` (an iterable of documents, read as it goes; separated by EOS) into ``path`` as ``dtype``
    token ids, a batch of pieces at a time (at most ENCODE_BATCH pieces or about BATCH_CHARS characters):
    memory stays bounded by a batch and a file's part (``corpus.segments``), never the corpus. Returns (tokens
    written, UTF-8 bytes of the text, each document's end counted as one byte like a newline: what bits per
    byte divide by)."""
    n, n_bytes, eos = 0, 0, np.asarray([tokenizer.eos_id], dtype=dtype)
    total = getattr(docs, "bytes_hint", None) or \
        (sum(len(d.encode("utf-8")) for d in docs) if isinstance(docs, (list, tuple)) else 0)
    started = time.monotonic()
    with open(path, "wb") as f, TokenisingProgress(label or path.stem, total) as progress:
        batch: list[tuple[str, bool]] = []  # (piece, whether it ends its document)
        chars = 0

        def flush() -> None:
            nonlocal n, chars
            for (_, last), ids in zip(batch, tokenizer.encode_batch([piece for piece, _ in batch])):
                arr = np.asarray(ids, dtype=dtype)
                arr.tofile(f)
                n += arr.size
                if last:
                    eos.tofile(f)
                    n += 1
            batch.clear()
            chars = 0

        def add(piece: str, last: bool) -> None:
            nonlocal chars
            batch.append((piece, last))
            chars += len(piece)
            if len(batch) >= ENCODE_BATCH or chars >= BATCH_CHARS:
                flush()
        for text, ends in segments(docs):
            size = len(text) if text.isascii() else len(text.encode("utf-8"))
            n_bytes += size + ends  # a document's end counts as one byte
            parts = pieces(text)
            held = next(parts)  # held back until we know whether it is the last piece
            for piece in parts:
                add(held, False)
                held = piece
            add(held, ends)
            progress.advance(size)  # bytes of text, as the total counts them
        flush()
    seconds = time.monotonic() - started
    log.info("tokenised %s: %.1f MB into %d tokens in %.1f s (%.1f MB/s)", label or path.stem, n_bytes / 1e6, n,
             seconds, n_bytes / 1e6 / max(seconds, 1e-9))
    return n, n_bytes


LOSS_ON = ("auto", "all", "answers")  # data.loss_on: which targets the loss counts (auto: answers where marked)


def counted_targets(targets: torch.Tensor, answers: np.ndarray | None, first: int) -> torch.Tensor:
    """``targets`` (T,) are the tokens at ``first`` .. ``first`` + T - 1 of a split. With ``answers`` (per token slot
    of the split: the answer's id where that slot's target is an answer, else -1), the answers replace the
    targets there (a task's answer need not be the next token of the text: MQAR's is a filler) and every other
    target becomes IGNORE."""
    if answers is None:
        return targets
    answer = torch.from_numpy(answers[first:first + len(targets)].astype(np.int64))  # (T,)
    return torch.where(answer >= 0, answer, torch.full_like(targets, IGNORE))


class TrainWindows(Dataset):
    """Non-overlapping windows: one epoch = one pass over the training tokens. ``counted``: see counted_targets."""

    def __init__(self, tokens: np.ndarray, context: int, counted: np.ndarray | None = None):
        if len(tokens) < context + 1:
            raise DataError(f"the training split has {len(tokens)} tokens, fewer than context+1 = {context + 1}")
        self.tokens, self.context, self.counted = tokens, context, counted
        self.n = (len(tokens) - 1) // context

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        s = i * self.context
        chunk = torch.from_numpy(np.asarray(self.tokens[s:s + self.context + 1], dtype=np.int64))  # (T+1,)
        return chunk[:-1], counted_targets(chunk[1:], self.counted, s + 1)  # input (T,), target (T,)


class EvalWindows(Dataset):
    """Windows of the context covering every target of the split exactly once. They start ``stride`` tokens
    apart (the last one aligned to the end), and each counts only the targets no earlier window counted: with
    ``stride`` = the context (the default) they lie side by side; a smaller stride is the sliding-window
    evaluation papers report, every target after the first window scored with at least ``context - stride``
    tokens before it, at ``context / stride`` times the compute."""

    def __init__(self, tokens: np.ndarray, context: int, counted: np.ndarray | None = None, stride: int | None = None):
        if len(tokens) < 2:
            raise DataError(f"an evaluation split has {len(tokens)} tokens; it needs at least 2")
        self.tokens, self.context, self.counted = tokens, min(context, len(tokens) - 1), counted
        if stride is not None and not 1 <= stride <= context:
            raise ConfigError(f"stride={stride} must be in [1, {context}] (the model's context): a longer step "
                              f"would leave targets unscored")
        self.stride = min(stride or self.context, self.context)
        n_targets = len(tokens) - 1
        self.n = 1 + -(-(n_targets - self.context) // self.stride)

    def __len__(self) -> int:
        return self.n

    def _start(self, i: int) -> int:
        return min(i * self.stride, len(self.tokens) - 1 - self.context)

    def __getitem__(self, i: int):
        c, start = self.context, self._start(i)
        chunk = torch.from_numpy(np.asarray(self.tokens[start:start + c + 1], dtype=np.int64))
        x, y = chunk[:-1], counted_targets(chunk[1:].clone(), self.counted, start + 1)
        already = self._start(i - 1) + c - start if i else 0  # targets the previous window counted
        if already > 0:
            y[:already] = IGNORE
        return x, y


class ResumableSampler(Sampler):
    """A seeded permutation per epoch that can skip the batches already seen (mid-epoch resume).

    Under data parallelism (world > 1) every rank draws the same permutation and each global batch of
    world x batch_size windows is cut into consecutive slices, rank r taking slice r: the ranks see disjoint
    windows, and their averaged gradient is the one-process gradient of that global batch.

    Its length stays the full epoch: Lightning counts the batches done before the checkpoint itself, so the
    skipped iterator simply runs out when the epoch is complete."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, batch_size: int = 1, rank: int = 0, world: int = 1):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.batch_size, self.rank, self.world = batch_size, rank, world
        self.epoch = 0
        self.skip, self.skip_epoch = 0, -1  # samples to skip, and in which epoch (the resumed one only)
        self._drawn: tuple[int, torch.Tensor] | None = None  # (epoch, its permutation)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _permutation(self) -> torch.Tensor:
        """This epoch's order of the windows (n,), drawn once per epoch: Lightning opens more than one iterator
        (a check, then the epoch), and a 1 GB corpus has ~10M windows (0.45 s a draw here)."""
        if self._drawn is None or self._drawn[0] != self.epoch:
            dtype = torch.int32 if self.n < 2 ** 31 else torch.int64  # the same permutation, half the memory
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._drawn = (self.epoch, torch.randperm(self.n, generator=g, dtype=dtype))  # (n,)
        return self._drawn[1]

    def __iter__(self):
        order = self._permutation() if self.shuffle else torch.arange(self.n)  # (n,)
        if self.world > 1:  # (global batches, world, batch) -> this rank's slices, in order
            n_global = self.n // (self.world * self.batch_size)
            order = order[:n_global * self.world * self.batch_size].view(n_global, self.world, self.batch_size)
            order = order[:, self.rank].flatten()  # (n_global * batch,)
        # Lightning may create more than one iterator for the resumed epoch: skip in every one of them
        skip = self.skip if self.epoch == self.skip_epoch else 0
        return (i for chunk in order[skip:].split(1 << 16) for i in chunk.tolist())  # as Python ints, lazily

    def __len__(self) -> int:
        if self.world == 1:
            return self.n
        return self.n // (self.world * self.batch_size) * self.batch_size


class RankShard(Dataset):
    """Rank r's share of an evaluation split: windows r, r + world, r + 2 world, ... Every rank gets the same
    number of windows (so the same number of batches); the few padding windows have every target IGNORE, so
    each target of the split is counted exactly once across the ranks."""

    def __init__(self, windows: Dataset, rank: int, world: int):
        self.windows, self.rank, self.world = windows, rank, world
        self.n = -(-len(windows) // world)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        j = i * self.world + self.rank
        if j < len(self.windows):
            return self.windows[j]
        x, y = self.windows[0]
        return x, torch.full_like(y, IGNORE)  # padding: counted zero times


class TextDataModule(L.LightningDataModule):
    def __init__(self, dataset: dict, tokenizer: dict, context: int, batch_size: int, cache_dir: str,
                 eval_batch_size: int | None = None, num_workers: int = 0, seed: int = 0,
                 overfit_batches: int = 0, tokenizer_from: str | None = None, verify: bool = False,
                 loss_on: str | None = "auto", eval_stride: int | None = None, document_mask: bool = False):
        """``tokenizer_from``: a folder with a ``tokenizer.json`` (a token cache entry, as in a run's log) whose
        tokenizer encodes this dataset instead of one trained on it: evaluating a run on other text.
        ``loss_on``: which targets every loss counts: ``all``, ``answers`` (a task's answer positions only: the
        rest of a synthetic example is noise no model can predict) or ``auto`` (answers where the dataset marks
        them, else all)."""
        super().__init__()
        if (loss_on or "auto") not in LOSS_ON:
            raise DataError(f"data.loss_on={loss_on!r} must be one of {list(LOSS_ON)}")
        self.loss_on_setting = loss_on or "auto"
        self.loss_on = "all"  # what it means for this dataset: decided when the data is read
        self.counted: dict[str, np.ndarray] = {}  # loss_on=answers: per split, a bool per token (an answer)
        self.tokenizer_from = tokenizer_from
        self.verify = verify  # re-hash the cached token arrays on load (sizes are always checked)
        self.dataset_cfg, self.tokenizer_cfg = dict(dataset), dict(tokenizer)
        self.context, self.batch_size = context, batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.cache_dir, self.num_workers, self.seed = Path(os.path.expanduser(cache_dir)), num_workers, seed
        self.overfit_batches = overfit_batches
        self.document_mask = document_mask  # the model attends within documents: see document_end
        self.eval_stride = eval_stride  # evaluation windows this many tokens apart (EvalWindows); None: side by side
        self.tokens: dict[str, np.ndarray] | None = None
        self.tokenizer = None
        self.split_bytes: dict[str, int] = {}
        self.sampler: ResumableSampler | None = None
        self.resume_at: tuple[int, int] | None = None  # (epoch, batches already trained on), from a checkpoint
        self.info: dict = {}
        self.corpus_id: str | None = None

    # -- preparing the token arrays (once per corpus x tokenizer x settings, then cached) --------------
    def _corpus(self) -> sources.Corpus:
        """(a key of the split text, a function that reads it, extra facts for the cache's meta.json, where the
        answers are), from the dataset's source (``data/sources/``)."""
        return sources.corpus(self.dataset_cfg, self.cache_dir)

    def prepare_data(self) -> None:
        self._load_or_build()

    def _load_or_build(self) -> None:
        if self.tokens is not None:
            return
        self._check_one_example_per_window()
        corpus_key, read_splits, extra, answers = self._corpus()
        tok_cfg = self.tokenizer_cfg
        fixed = None
        if self.tokenizer_from:
            if not (Path(self.tokenizer_from) / "tokenizer.json").is_file():
                raise DataError(f"tokenizer_from={self.tokenizer_from}: no tokenizer.json there")
            fixed = load_tokenizer(self.tokenizer_from)
        settings = {"corpus": corpus_key, "tokenizer": tok_cfg.get("name"), "encoding": 2,  # 2: cuts fixed
                    "vocab_size": tok_cfg.get("vocab_size"), "eos_between_documents": True}
        if tok_cfg.get("train_bytes") is not None:
            settings["train_bytes"] = tok_cfg["train_bytes"]
        if fixed is not None:
            settings["tokenizer_from"] = fixed.fingerprint
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        entry = self.cache_dir / "tokens" / f"{self.dataset_cfg.get('name', 'data')}-{tok_cfg.get('name')}-{key}"
        with cache.building(entry):  # one builder per entry across processes; the others reuse it
            tokens = cache.load(entry, verify=self.verify)
            if tokens is None:
                log.info("tokenising %s with %s (cached afterwards in %s)", self.dataset_cfg.get("name"),
                         tok_cfg.get("name"), entry)
                splits = read_splits()
                tokenizer = fixed or build_tokenizer(tok_cfg.get("name"), splits["train"], tok_cfg.get("vocab_size", 4096),
                                                     tok_cfg.get("train_bytes"))
                dtype = np.uint16 if tokenizer.vocab_size < 2 ** 16 else np.uint32

                # bits per byte compare models with different tokenizers: the text's UTF-8 bytes per split
                n_bytes = {}

                def write_splits(folder: Path) -> dict:  # token ids straight into the files, batch by batch
                    lengths = {}
                    for s in SPLITS:
                        lengths[s], n_bytes[s] = write_tokens(tokenizer, splits[s], folder / f"{s}.bin", dtype,
                                                              f"the {s} split")
                    return {s: (lengths[s], dtype) for s in SPLITS}
                cache.save_streamed(entry, write_splits, {"settings": settings, "bytes": n_bytes, **extra},
                                    tokenizer.save)
                tokens = cache.load(entry)
                if tokens is None:
                    raise DataError(f"could not write the token cache at {entry}")
        self.tokens = tokens
        meta = json.loads((entry / "meta.json").read_text())
        self.split_bytes = meta.get("bytes", {})
        # the training tokens' identity (their SHA-256, hashed when the cache was built): a resume on other text,
        # even text that keeps the tokenizer unchanged, is refused by comparing it
        self.corpus_id = str((meta.get("splits", {}).get("train") or {}).get("sha256", ""))[:16] or None
        self.tokenizer = load_tokenizer(entry)
        self._mark_answers(answers)
        self.info = {"cache_entry": str(entry), **{f"{s}_tokens": int(len(tokens[s])) for s in SPLITS},
                     "vocab_size": self.tokenizer.vocab_size, **extra}

    def _check_one_example_per_window(self) -> None:
        """A synthetic task's example must fit the model's context (one example per window, as its answers and the
        task's scoring assume)."""
        length = self.dataset_cfg.get("length")
        if self.dataset_cfg.get("source") == "synthetic" and isinstance(length, int) and length != self.context:
            longer = "longer" if length > self.context else "shorter"
            raise DataError(f"dataset.length={length} is {longer} than model.context={self.context}: an example must "
                            f"be exactly one window (windows are cut at multiples of the context; leave "
                            f"dataset.length at its default, the context)")

    def _mark_answers(self, answers) -> None:
        """data.loss_on: with answers, a bool per token of each split saying which targets the loss counts."""
        setting = self.loss_on_setting
        if setting == "all" or (setting == "auto" and answers is None):
            self.loss_on, self.counted = "all", {}
            return
        name = self.dataset_cfg.get("name")
        if answers is None:
            raise DataError(f"data.loss_on=answers: dataset={name} marks no answers (only the synthetic tasks do); "
                            f"use data.loss_on=all")
        counted = {}
        for split, (positions, expected, chars) in answers().items():
            n = len(self.tokens[split])
            ids = self.tokenizer.encode(chars)
            if n != expected or len(ids) != len(positions):
                raise DataError(f"dataset={name} (task {self.dataset_cfg.get('task')}) needs one token per character "
                                f"(tokenizer=char): its {split} split is {expected} characters but {n} tokens with "
                                f"tokenizer={self.tokenizer_cfg.get('name')}")
            counted[split] = np.full(n, -1, dtype=np.int32)  # the answer's id where a target is an answer
            counted[split][positions] = ids
        self.loss_on, self.counted = "answers", counted
        per = (counted["train"] >= 0).sum() / max(1, len(counted["train"]))
        log.info("the loss counts the answers only (data.loss_on=answers): %.1f%% of the targets", 100 * per)

    def setup(self, stage: str | None = None) -> None:
        self._load_or_build()

    def tokens_per_byte(self, split: str) -> float | None:
        """Targets per UTF-8 byte of a split's text: loss (nats per token) x this / ln 2 = bits per byte. None when
        the loss counts a task's answers only (bits per byte of the text would mean nothing)."""
        if getattr(self, "loss_on", "all") == "answers":
            return None
        n_bytes = (getattr(self, "split_bytes", None) or {}).get(split)
        return (len(self.tokens[split]) - 1) / n_bytes if n_bytes and self.tokens is not None else None

    @property
    def vocab_size(self) -> int:
        self._load_or_build()
        return self.tokenizer.vocab_size

    @property
    def document_end(self) -> int | None:
        """The token that ends a document, for the model's document masking (data.document_mask); else None."""
        if not self.document_mask:
            return None
        self._load_or_build()
        return self.tokenizer.eos_id

    # -- loaders -----------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        ds = TrainWindows(self.tokens["train"], self.context, self.counted.get("train"))
        if self.overfit_batches:
            ds = torch.utils.data.Subset(ds, list(range(min(len(ds), self.overfit_batches * self.batch_size))))
        rank, world = self._rank_and_world()
        if len(ds) < self.batch_size * world:  # drop_last would leave an epoch of no batches
            processes = f"{world} processes x " if world > 1 else ""
            raise DataError(f"the training split has {len(ds)} windows of model.context={self.context} tokens, fewer "
                            f"than one batch of {processes}data.batch_size={self.batch_size}; lower data.batch_size "
                            f"or model.context, or give more text")
        if self.sampler is None or self.sampler.n != len(ds):
            self.sampler = ResumableSampler(len(ds), self.seed, shuffle=not self.overfit_batches,
                                            batch_size=self.batch_size, rank=rank, world=world)
        if self.resume_at is not None:  # Lightning may iterate before it sets the epoch: set both here
            epoch, done = self.resume_at
            self.sampler.set_epoch(epoch)
            self.sampler.skip, self.sampler.skip_epoch = done * self.batch_size, epoch
            self.resume_at = None
            if done:
                log.info("resuming in epoch %d after the %d batches already trained on", epoch, done)
        return DataLoader(ds, batch_size=self.batch_size, sampler=self.sampler, drop_last=True,
                          num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0)

    def _rank_and_world(self) -> tuple[int, int]:
        """This process's rank and the number of data-parallel processes (Lightning's samplers are off: the
        loaders shard the data themselves, see ResumableSampler and RankShard)."""
        if self.trainer is None:
            return 0, 1
        return int(self.trainer.global_rank), int(self.trainer.world_size)

    def _eval_loader(self, split: str) -> DataLoader:
        windows = EvalWindows(self.tokens[split], self.context, self.counted.get(split), self.eval_stride)
        rank, world = self._rank_and_world()
        if world > 1:
            windows = RankShard(windows, rank, world)
        return DataLoader(windows, batch_size=self.eval_batch_size, shuffle=False, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        if self.overfit_batches:  # the overfit check evaluates on the batches it memorises
            windows = TrainWindows(self.tokens["train"], self.context, self.counted.get("train"))
            ds = torch.utils.data.Subset(windows, list(range(min(len(windows), self.overfit_batches * self.batch_size))))
            return DataLoader(ds, batch_size=self.batch_size)
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    # -- resume: where in the data we were (saved in every checkpoint by Lightning) -----------------------
    def state_dict(self) -> dict:
        """The data position: this epoch's order and how many of its batches were trained on."""
        if self.trainer is None:
            return {}
        epoch_loop = self.trainer.fit_loop.epoch_loop
        done = int(epoch_loop.batch_progress.current.processed)  # includes the batch just processed
        return {"epoch": int(self.trainer.current_epoch), "batches_in_epoch": done,
                "batches_per_epoch": int(self.trainer.num_training_batches)}

    def load_state_dict(self, state: dict) -> None:
        """Called from a checkpoint before the train loader is built: same epoch order, seen batches skipped."""
        if not state:
            return
        epoch, done, per_epoch = state["epoch"], state["batches_in_epoch"], state["batches_per_epoch"]
        if done >= per_epoch:  # saved at the end of an epoch: the next one starts from its first batch
            epoch, done = epoch + 1, 0
        self.resume_at = (epoch, done)
