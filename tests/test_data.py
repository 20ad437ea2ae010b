"""The embedded corpus loads offline and splits by play; tokenizers round-trip; the cache rejects damage."""
import json
from pathlib import Path

import numpy as np
import pytest

from attnlab.data import cache
from attnlab.data.corpus import (DataError, markdown_to_play, play_files, shakespeare_splits,
                                 text_file_splits)
from attnlab.data.datamodule import IGNORE, EvalWindows, TextDataModule, TrainWindows
from attnlab.data.tokenizers import CharTokenizer, HFTokenizer, load_tokenizer
from conftest import ROOT


def test_embedded_corpus_has_the_38_plays_and_splits_disjoint_by_play():
    assert len(play_files()) == 38
    splits, chosen = shakespeare_splits(3, 3, 1234)
    names = [set(chosen[s]) for s in ("train", "val", "test")]
    assert sum(len(n) for n in names) == 38
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    again, chosen2 = shakespeare_splits(3, 3, 1234)
    assert chosen2 == chosen  # deterministic
    assert shakespeare_splits(3, 3, 99)[1] != chosen
    text = "".join(splits["train"])
    assert "**" not in text and "\\[" not in text and "\n#" not in text
    assert "HAMLET:" in "".join(sum(splits.values(), [])) or "MACBETH:" in "".join(sum(splits.values(), []))


def test_markdown_conversion():
    md = "# Hamlet\n\n## ACT I\n\n### SCENE I. Elsinore.\n\n_Enter BERNARDO_\n\n**BERNARDO**  \nWho's there?  \nNay \\[aside\\]\n"
    assert markdown_to_play(md) == ("Hamlet\n\nACT I\n\nSCENE I. Elsinore.\n\n[Enter BERNARDO]\n\nBERNARDO:\n"
                                    "Who's there?\nNay [aside]\n")


def test_char_tokenizer_round_trip_and_unknown(tmp_path):
    tok = CharTokenizer.train(["hello world\n"])
    assert tok.decode(tok.encode("hello")) == "hello"
    assert tok.encode("z") == [tok.unk_id]
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).encode("world") == tok.encode("world")


def test_bpe_tokenizer_round_trip(tmp_path):
    text = "To be, or not to be, that is the question:\n" * 50
    tok = HFTokenizer.train_bpe([text], 300)
    s = "Whether 'tis nobler in the mind to suffer ü"
    assert tok.decode(tok.encode(s)) == s  # byte-level: nothing unknown
    assert tok.vocab_size <= 300
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).encode(s) == tok.encode(s)


def test_eval_windows_cover_every_target_once():
    toks = np.arange(103)
    ds = EvalWindows(toks, 10)
    targets = []
    for i in range(len(ds)):
        x, y = ds[i]
        assert len(x) == 10
        targets += [int(t) for t in y if t != IGNORE]
    assert targets == list(range(1, 103))


def test_train_windows_shift_by_one():
    ds = TrainWindows(np.arange(50), 8)
    x, y = ds[2]
    assert x.tolist() == list(range(16, 24)) and y.tolist() == list(range(17, 25))


def test_cache_detects_corruption_and_rebuilds(tmp_path):
    dm = TextDataModule({"name": "shakespeare", "source": "shakespeare"}, {"name": "char"}, 32, 4, str(tmp_path))
    dm.prepare_data()
    entry = tmp_path / "tokens"
    [entry] = [p for p in entry.iterdir() if p.is_dir()]
    n_train = len(dm.tokens["train"])
    (entry / "train.bin").write_bytes(b"\0" * 10)  # truncated
    assert cache.load(entry) is None and not entry.exists()  # rejected and removed
    dm2 = TextDataModule({"name": "shakespeare", "source": "shakespeare"}, {"name": "char"}, 32, 4, str(tmp_path))
    dm2.prepare_data()
    assert len(dm2.tokens["train"]) == n_train
    # flipped bytes of the right size are caught by the checksum
    data = bytearray((entry / "val.bin").read_bytes())
    data[100] ^= 0xFF
    (entry / "val.bin").write_bytes(bytes(data))
    assert cache.load(entry) is None
    assert not list((tmp_path / "tokens").glob("*.tmp*"))  # no half-written entries left behind


def test_a_cache_hit_converts_no_markdown_and_a_new_conversion_rebuilds(tmp_path, monkeypatch):
    from attnlab.data import corpus
    make = lambda: TextDataModule({"name": "shakespeare", "source": "shakespeare"}, {"name": "char"}, 32, 4,  # noqa: E731
                                  str(tmp_path))
    first = make()
    first.prepare_data()
    monkeypatch.setattr(corpus, "markdown_to_play", lambda md: (_ for _ in ()).throw(AssertionError("converted")))
    again = make()
    again.prepare_data()  # start-up of every later run: no conversion (it costs seconds)
    assert np.array_equal(again.tokens["train"], first.tokens["train"])
    monkeypatch.setattr(corpus, "MARKDOWN_VERSION", corpus.MARKDOWN_VERSION + 1)
    with pytest.raises(AssertionError, match="converted"):
        make().prepare_data()  # another conversion is another cache entry


def test_documents_are_separated_by_eos(tmp_path):
    dm = TextDataModule({"name": "shakespeare", "source": "shakespeare"}, {"name": "char"}, 32, 4, str(tmp_path))
    dm.prepare_data()
    n_docs = int((np.asarray(dm.tokens["train"]) == dm.tokenizer.eos_id).sum())
    assert n_docs == 38 - 6


def test_hub_dataset_offline_says_how_to_use_local_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"dataset=text_files dataset.path="):
        from attnlab.data.sources import hub
        hub.load("Salesforce/wikitext", "wikitext-2-raw-v1", str(tmp_path))


def test_text_files_split(tmp_path):
    for i in range(5):
        (tmp_path / f"doc{i}.txt").write_text(f"document {i}\n" * 20)
    s = text_file_splits(str(tmp_path), 0.05, 0.05, 1234)
    assert sum(len(v) for v in s.values()) == 5 and all(s.values())
    one = tmp_path / "doc0.txt"
    s = text_file_splits(str(one), 0.1, 0.1, 1234)
    assert "".join([*s["train"], *s["val"], *s["test"]]) == one.read_text()
    with pytest.raises(DataError, match=r"dataset.path='/nonexistent/\*.txt' matches no .txt file"):
        text_file_splits("/nonexistent/*.txt", 0.05, 0.05, 1234)


def _build(cache_dir):
    dm = TextDataModule({"name": "shakespeare", "source": "shakespeare"}, {"name": "char"}, 32, 4, str(cache_dir))
    dm.prepare_data()
    return dm


def test_a_damaged_tokenizer_is_caught_and_the_entry_rebuilt(tmp_path):
    dm = _build(tmp_path)
    [entry] = [p for p in (tmp_path / "tokens").iterdir() if p.is_dir()]
    (entry / "tokenizer.json").write_text('{"kind": "char", "itos": [')  # cut short
    assert cache.load(entry) is None and not entry.exists()
    dm2 = _build(tmp_path)
    assert dm2.tokenizer.encode("ROMEO") == dm.tokenizer.encode("ROMEO")


def _build_in_process(cache_dir):
    _build(cache_dir)


def test_concurrent_builders_of_one_entry_both_succeed(tmp_path):
    import multiprocessing as mp
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_build_in_process, args=(tmp_path,)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    entries = [p for p in (tmp_path / "tokens").iterdir() if p.is_dir()]
    assert len(entries) == 1 and cache.load(entries[0]) is not None  # one intact entry, no leftovers


def test_bits_per_byte_rescale_the_loss_by_the_splits_tokens_per_byte(make_cfg):
    import math
    from attnlab.spec import RunSpec
    from attnlab.train import train
    cfg = make_cfg(["mode=debug", "trainer.max_epochs=1", "trainer.limit_train_batches=3"])
    metrics = train(cfg)
    dm = RunSpec.from_hydra(cfg).data.build()
    dm.prepare_data()
    ratio = dm.tokens_per_byte("test")
    assert 0.95 < ratio <= 1.0  # characters: one token per byte, fewer where a character takes several bytes
    assert metrics["test/bpb"] == pytest.approx(metrics["test/loss"] * ratio / math.log(2), rel=1e-5)


def test_train_plays_keeps_a_slice_of_the_training_plays_and_the_same_held_out_plays():
    from attnlab.data.corpus import DataError, shakespeare_splits
    _, every = shakespeare_splits(3, 3, 1234)
    _, three = shakespeare_splits(3, 3, 1234, train_plays=3)
    assert len(three["train"]) == 3 and set(three["train"]) < set(every["train"])
    assert three["val"] == every["val"] and three["test"] == every["test"]
    with pytest.raises(DataError, match=r"dataset.train_plays=40 must be in \[1, 32\]"):
        shakespeare_splits(3, 3, 1234, train_plays=40)


# -- data sources: a registry like the attention types' ------------------------------------------------------

def test_an_unknown_source_lists_the_valid_ones(tmp_path):
    from attnlab.data import sources
    with pytest.raises(DataError, match=r"unknown dataset.source 'csv'; valid: \['hub', 'jsonl', 'shakespeare', 'synthetic', 'text_files'\]"):
        sources.corpus({"source": "csv"}, tmp_path)
    for name in sources.SOURCE_MODULES:  # every registered source loads and has a yaml using it
        assert callable(sources.get_source(name))
        assert any(f"source: {name}" in p.read_text() for p in (ROOT / "conf" / "dataset").glob("*.yaml")), name


def _jsonl(path: Path, texts, field="text"):
    path.write_text("".join(json.dumps({field: t, "id": i}) + "\n" for i, t in enumerate(texts)))
    return path


def test_jsonl_source_splits_documents_and_names_bad_lines(tmp_path):
    from attnlab.data import sources
    f = _jsonl(tmp_path / "docs.jsonl", [f"document number {i}" for i in range(40)])
    c = sources.corpus({"source": "jsonl", "path": str(f)}, tmp_path)
    splits = c.read()
    assert [len(splits[s]) for s in ("train", "val", "test")] == [36, 2, 2]
    assert sorted(sum(splits.values(), [])) == sorted(f"document number {i}" for i in range(40))  # each once
    assert sources.corpus({"source": "jsonl", "path": str(f)}, tmp_path).key == c.key  # seeded: the same split
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2 has no text in dataset.text_field='text' \(its keys: \['body'\]\)"):
        sources.corpus({"source": "jsonl", "path": str(bad)}, tmp_path).read()  # read when the cache is built
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match=r"broken.jsonl:1 is not a JSON object"):
        sources.corpus({"source": "jsonl", "path": str(tmp_path / "broken.jsonl")}, tmp_path).read()


def test_jsonl_dataset_trains_end_to_end(make_cfg, tmp_path):
    from attnlab.train import train
    f = _jsonl(tmp_path / "stories.jsonl", [("once upon a time there was a cat. " * 30) for _ in range(30)], "story")
    cfg = make_cfg(["mode=debug", "dataset=jsonl", f"dataset.path={f}", "dataset.text_field=story",
                    "trainer.max_epochs=1", "trainer.limit_train_batches=3", "data.batch_size=4", "test_after_fit=false"])
    metrics = train(cfg)
    assert metrics["val/loss"] < 4.0


def test_hub_split_names_text_column_and_a_missing_test_split(tmp_path, monkeypatch):
    """documents=joined (the default): a split's rows are the lines of one document, read in parts (never the
    split whole); a split the dataset lacks is cut from the training rows."""
    import datasets
    from attnlab.data import corpus, sources
    from attnlab.data.sources import hub
    rows = [f"row {i}" for i in range(100)]
    ds = {"train": datasets.Dataset.from_dict({"content": rows}), "dev": datasets.Dataset.from_dict({"content": ["held out"]})}
    monkeypatch.setattr(hub, "load", lambda *a: ds)
    monkeypatch.setattr(corpus, "SEGMENT_CHARS", 40)
    settings = {"source": "hub", "path": "someone/corpus", "text_field": "content",
                "split_names": {"val": "dev", "test": "test"}}
    splits = sources.corpus(settings, tmp_path).read()  # no test split: 5 rows of train become it
    assert sum(1 for _ in splits["train"].segments()) > 10
    [val], [test], [train] = (list(splits[s]) for s in ("val", "test", "train"))
    assert val == "held out" and test.count("row") == 5 and train.count("row") == 95
    assert sorted(test.split("\n") + train.split("\n")) == sorted(rows)  # each row once, as a line
    assert train == "\n".join(r for r in rows if r not in test.split("\n"))  # in their order
    with pytest.raises(DataError, match=r"dataset.text_field='text' is not a column of 'someone/corpus' \(its columns: \['content'\]\)"):
        sources.corpus({**settings, "text_field": "text"}, tmp_path).read()
    with pytest.raises(DataError, match=r"dataset.split_names.train='training' is not a split of 'someone/corpus'; it has \['dev', 'train'\]"):
        sources.corpus({**settings, "split_names": {"train": "training"}}, tmp_path).read()


def test_a_cache_hit_reads_no_text_and_hashes_no_token_array(tmp_path, monkeypatch):
    from attnlab.data import cache
    from attnlab.data.sources import text_files
    for i in range(4):
        (tmp_path / f"doc{i}.txt").write_text(f"document {i} says something\n" * 200)
    make = lambda **kw: TextDataModule({"name": "mine", "source": "text_files", "path": str(tmp_path / "*.txt")},  # noqa: E731
                                       {"name": "char"}, 16, 4, str(tmp_path / "cache"), **kw)
    make().prepare_data()  # builds the entry
    [entry] = [p for p in (tmp_path / "cache" / "tokens").iterdir() if p.is_dir()]
    original = (entry / "val.bin").read_bytes()
    reads, hashed = [], []
    real_read, real_sha = text_files.text_file_splits, cache._sha
    monkeypatch.setattr(text_files, "text_file_splits", lambda *a: reads.append(a) or real_read(*a))
    monkeypatch.setattr(cache, "_sha", lambda f: hashed.append(Path(f).name) or real_sha(f))
    make().prepare_data()
    assert not reads and not [h for h in hashed if h.endswith(".bin")]  # nothing read, no array re-hashed
    damaged = bytearray(original)
    damaged[10] ^= 0xFF  # damage of the same size: found with data.verify=true, and the entry rebuilt
    (entry / "val.bin").write_bytes(bytes(damaged))
    make(verify=True).prepare_data()
    assert reads and (entry / "val.bin").read_bytes() == original
    (entry / "train.bin").write_bytes(b"\0" * 8)  # a short file is found at every start, verify or not
    assert cache.load(entry, verify=False) is None and not entry.exists()


def test_bpe_learns_from_a_bounded_sample_of_the_training_split():
    from attnlab.data.tokenizers import bounded, build_tokenizer
    texts = ["aaaa " * 1000, "zzzz " * 1000]
    assert "".join(bounded(texts, 20)) == ("aaaa " * 4) and sum(map(len, bounded(texts, None))) == 10_000
    assert list(bounded(["é" * 10], 3)) == ["é"]  # a cut never splits a character
    small = build_tokenizer("bpe", texts, vocab_size=300, train_bytes=5000)  # the first text only
    full = build_tokenizer("bpe", texts, vocab_size=300)
    assert len(small.encode("zzzz zzzz")) > len(full.encode("zzzz zzzz"))  # it never saw 'z' runs to merge


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_streamed_tokens_equal_encoding_each_document_whole(tmp_path, monkeypatch, kind):
    from attnlab.data import corpus, datamodule
    from attnlab.data.tokenizers import build_tokenizer
    monkeypatch.setattr(corpus, "PIECE_CHARS", 300)  # long documents are cut into many pieces
    monkeypatch.setattr(datamodule, "ENCODE_BATCH", 3)
    docs = ["Line one of a play.\n  indented line\n\nNEXT SPEAKER: words, words.\n" * 40, "short doc", "x\n" * 500]
    tok = build_tokenizer(kind, docs, vocab_size=300)
    assert len(list(corpus.pieces(docs[0]))) > 5
    n, n_bytes = datamodule.write_tokens(tok, iter(docs), tmp_path / "t.bin", np.uint16)  # read as it goes
    want = [i for d in docs for i in (*tok.encode(d), tok.eos_id)]
    assert np.fromfile(tmp_path / "t.bin", dtype=np.uint16).tolist() == want and n == len(want)
    assert n_bytes == sum(len(d.encode()) + 1 for d in docs)


@pytest.mark.parametrize("streaming", [False, True])
def test_hub_rows_are_documents_read_in_batches_and_equal_encoding_each_row(tmp_path, monkeypatch, streaming):
    """documents=rows: each row a document (an end token between them), read a batch at a time; streamed, the
    first val_rows / test_rows rows of the training stream are the held-out splits."""
    import datasets
    from attnlab.data.sources import hub
    rows = [f"page {i}: " + "words and more words. " * (i % 7 + 1) for i in range(300)]
    table = datasets.Dataset.from_dict({"text": rows})
    ds = {"train": table.to_iterable_dataset() if streaming else table}
    monkeypatch.setattr(hub, "load", lambda *a, **k: ds)
    settings = {"name": "web", "source": "hub", "path": "someone/web", "documents": "rows", "streaming": streaming,
                "val_rows": 20, "test_rows": 10, "val_fraction": 0.1, "test_fraction": 0.05}
    dm = TextDataModule(settings, {"name": "char"}, 16, 4, str(tmp_path / "cache"))
    dm.prepare_data()
    tok = dm.tokenizer
    decoded = {s: tok.decode(dm.tokens[s].tolist()) for s in ("train", "val", "test")}
    eos = tok.decode([tok.eos_id])
    split_rows = {s: [r for r in decoded[s].split(eos) if r] for s in decoded}
    assert sorted(split_rows["train"] + split_rows["val"] + split_rows["test"]) == sorted(rows)  # each row once
    if streaming:
        assert split_rows["val"] == rows[:20] and split_rows["test"] == rows[20:30] and split_rows["train"] == rows[30:]
    else:
        assert len(split_rows["val"]) == 30 and len(split_rows["test"]) == 15
    for s in ("train", "val", "test"):  # every row is encoded whole and followed by the end token
        want = [i for r in split_rows[s] for i in (*tok.encode(r), tok.eos_id)]
        assert dm.tokens[s].tolist() == want


def test_streaming_needs_rows_and_documents_is_checked(tmp_path):
    from attnlab.data import sources
    with pytest.raises(DataError, match="dataset.streaming=true reads rows as they come: it needs dataset.documents=rows"):
        sources.corpus({"source": "hub", "path": "x/y", "streaming": True}, tmp_path)
    with pytest.raises(DataError, match="dataset.documents='pages' must be joined or rows"):
        sources.corpus({"source": "hub", "path": "x/y", "documents": "pages"}, tmp_path)


def test_pieces_never_cut_a_blank_line(tmp_path, monkeypatch):
    """A blank line's two newlines can be one BPE token (GPT-2's has one): a cut between them would change the
    tokens. Paragraphs separated by blank lines tokenise in pieces exactly as whole."""
    from attnlab.data import corpus, datamodule
    from attnlab.data.tokenizers import build_tokenizer
    monkeypatch.setattr(corpus, "PIECE_CHARS", 50)
    doc = "\n\n".join(f"Paragraph {i} says a few words here." for i in range(40)) + "\n"
    tok = build_tokenizer("bpe", [doc] + ["words\n\n"] * 50, vocab_size=400)  # texts ending in a blank line
    assert len(tok.encode("a\n\n")) == 2  # it learned "\n\n" as one token (at the end of a text)
    n, _ = datamodule.write_tokens(tok, [doc], tmp_path / "t.bin", np.uint16)
    assert np.fromfile(tmp_path / "t.bin", dtype=np.uint16).tolist() == [*tok.encode(doc), tok.eos_id]


def test_bpe_learns_the_same_merges_from_pieces_as_from_whole_documents(monkeypatch):
    """The trainer is fed documents in pieces (its memory grows with its longest input): the cuts do not change
    what it learns."""
    from attnlab.data import corpus
    from attnlab.data.tokenizers import HFTokenizer, build_tokenizer
    monkeypatch.setattr(corpus, "PIECE_CHARS", 200)
    docs = ["def f(x):\n    return x + 1\n\nclass A:\n    pass\n" * 60, "Plain words, and more words.\n" * 80]
    assert len(list(corpus.pieces(docs[0]))) > 10
    assert build_tokenizer("bpe", docs, 400).tok.to_str() == HFTokenizer.train_bpe(iter(docs), 400).tok.to_str()


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_text_files_are_read_in_parts_with_the_tokens_of_the_whole_files(tmp_path, monkeypatch, kind):
    """A text file is read SEGMENT_CHARS characters at a time, cut where the tokens do not change: the token
    array, the byte count and the trained tokenizer are those of the whole files, and no file is read whole."""
    from attnlab.data import corpus, datamodule
    from attnlab.data.tokenizers import build_tokenizer
    texts = ["Première ligne, déjà.\n  indented\n\nNEXT: words, words.\n" * 30,  # non-ASCII: bytes != chars
             "one long line without a newline " * 20, "", "last\n" * 40]
    files = []
    for i, text in enumerate(texts):
        files.append(tmp_path / f"f{i}.txt")
        files[-1].write_text(text, encoding="utf-8")
    whole_tok = build_tokenizer(kind, texts, vocab_size=300)
    monkeypatch.setattr(corpus, "SEGMENT_CHARS", 64)
    monkeypatch.setattr(corpus.FileDocuments, "__iter__", lambda self: pytest.fail("a whole file was read"))
    docs = corpus.FileDocuments([str(f) for f in files])
    assert sum(1 for _ in docs.segments()) > 20
    tok = build_tokenizer(kind, docs, vocab_size=300)
    assert (tok.itos if kind == "char" else tok.tok.to_str()) == \
        (whole_tok.itos if kind == "char" else whole_tok.tok.to_str())
    n, n_bytes = datamodule.write_tokens(tok, docs, tmp_path / "t.bin", np.uint16)
    want = [i for t in texts for i in (*tok.encode(t), tok.eos_id)]
    assert np.fromfile(tmp_path / "t.bin", dtype=np.uint16).tolist() == want and n == len(want)
    assert n_bytes == sum(len(t.encode("utf-8")) + 1 for t in texts)


def test_tokenising_shows_a_bar_on_a_terminal_and_log_lines_elsewhere(tmp_path, monkeypatch, caplog, capsys):
    import logging

    import rich.console
    from attnlab.data import datamodule
    from attnlab.data.tokenizers import build_tokenizer
    monkeypatch.setattr(datamodule, "ENCODE_BATCH", 2)
    docs = ["some words\n" * 50] * 6
    tok = build_tokenizer("char", docs)
    ticks = iter(range(0, 10_000, 6))  # each look at the clock: 6 s later
    with caplog.at_level(logging.INFO, logger="attnlab.data.datamodule"):
        monkeypatch.setattr(datamodule.TokenisingProgress, "clock", staticmethod(lambda: next(ticks)))
        datamodule.write_tokens(tok, docs, tmp_path / "a.bin", np.uint16, "train")  # not a terminal: log lines
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tokenising train:")]
        assert all("MB/s" in m for m in lines) and any("of 0 MB" in m and "s left" in m for m in lines), lines
        caplog.clear()
        monkeypatch.setattr(rich.console.Console, "is_terminal", property(lambda self: True))
        datamodule.write_tokens(tok, docs, tmp_path / "b.bin", np.uint16, "train")  # a terminal: the bar
        assert not [r for r in caplog.records if r.getMessage().startswith("tokenising train:")]
    assert "tokenising train" in capsys.readouterr().err


def test_one_file_is_split_by_lines_without_being_read_whole(tmp_path, monkeypatch):
    """Fewer than 3 files: each is cut at the first newline past 90% and 95% of its characters (train, val,
    test), found and read in parts."""
    from attnlab.data import corpus
    text = "".join(f"ligne {i} é" * (i % 5 + 1) + "\n" for i in range(300))  # non-ASCII: characters != bytes
    one = tmp_path / "one.txt"
    one.write_text(text, encoding="utf-8")

    def line_cut(fraction):
        j = text.find("\n", int(len(text) * fraction))
        return len(text) if j < 0 else j + 1
    a, b = line_cut(0.8), line_cut(0.9)
    monkeypatch.setattr(corpus, "SEGMENT_CHARS", 50)
    monkeypatch.setattr(Path, "read_text", lambda *a, **k: pytest.fail("a whole file was read"))
    s = text_file_splits(str(one), 0.1, 0.1, 1234)
    assert [list(s[k]) for k in ("train", "val", "test")] == [[text[:a]], [text[a:b]], [text[b:]]]
    assert s["train"].bytes_hint == a


def test_parts_tokenise_as_the_whole_for_any_whitespace(tmp_path, monkeypatch):
    """Random texts rich in whitespace runs (blank lines, spaces before newlines, CRLF, tabs, wikitext's
    ' \\n \\n ' lines), cut into parts of a few characters: byte-level BPE gives the whole text's tokens."""
    import random

    from attnlab.data import corpus, datamodule
    from attnlab.data.tokenizers import build_tokenizer
    rng = random.Random(0)
    alphabet = [" ", " ", "\n", "\n", "\r\n", "\t", " \n \n ", "\n\n", "a", "bc", "é", "1", ".", "'s", "'", "_", "(", "= "]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120))) for _ in range(300)]
    tok = build_tokenizer("bpe", texts * 3, vocab_size=400)  # learns merges of whitespace runs too
    assert any(len(tok.encode(w)) == 1 for w in ("\n\n", " \n", "  ", "\n \n"))
    monkeypatch.setattr(corpus, "PIECE_CHARS", 2)
    monkeypatch.setattr(corpus, "SEGMENT_CHARS", 3)
    for i, text in enumerate(texts):
        (tmp_path / f"{i}.txt").write_bytes(text.encode("utf-8"))
    docs = corpus.FileDocuments([str(tmp_path / f"{i}.txt") for i in range(len(texts))])
    n, _ = datamodule.write_tokens(tok, docs, tmp_path / "t.bin", np.uint16)
    read = [t.replace("\r\n", "\n") for t in texts]  # text files are read with universal newlines
    want = [i for t in read for i in (*tok.encode(t), tok.eos_id)]
    assert np.fromfile(tmp_path / "t.bin", dtype=np.uint16).tolist() == want


def test_wikitext_shaped_text_is_read_in_parts():
    """Lines that start with a space, blank lines holding a space: cuts exist (the old rule, a newline between
    two non-spaces, found none and held the whole text), and finding them stays linear."""
    from attnlab.data import corpus
    text = " = Heading = \n \n" + " Some words of a sentence , and more . \n \n" * 20_000
    parts = list(corpus.cut_segments(text[i:i + 4096] for i in range(0, len(text), 4096)))
    assert "".join(p for p, _ in parts) == text and len(parts) > len(text) // 8192
    assert max(len(p) for p, _ in parts) < 8192


def test_the_sampler_draws_each_epochs_permutation_once_and_skips_on_resume(monkeypatch):
    """The order is torch.randperm's with the epoch's seed (as it always was); a second iterator of the same
    epoch (Lightning opens one to check the loader) reuses the draw; a resumed epoch skips what was seen."""
    import torch

    from attnlab.data.datamodule import ResumableSampler
    sampler = ResumableSampler(1000, seed=3)
    want = [torch.randperm(1000, generator=torch.Generator().manual_seed(3 * 1_000_003 + e)).tolist() for e in (0, 1)]
    draws = []
    real = torch.randperm
    monkeypatch.setattr(torch, "randperm", lambda *a, **k: draws.append(a) or real(*a, **k))
    assert list(sampler) == want[0] and list(sampler) == want[0] and len(draws) == 1
    sampler.set_epoch(1)
    sampler.skip, sampler.skip_epoch = 300, 1
    assert list(sampler) == want[1][300:] and len(draws) == 2
    assert all(type(i) is int for i in sampler)  # plain ints for the DataLoader


def test_progress_ends_at_its_total_for_non_ascii_text(tmp_path, monkeypatch):
    """Progress counts bytes of text, as its total (the files' sizes) does: a non-ASCII corpus ends at 100%."""
    from attnlab.data import corpus, datamodule
    from attnlab.data.tokenizers import build_tokenizer
    for i in range(3):
        (tmp_path / f"{i}.txt").write_text("déjà vu, ça — ok\n" * (50 + i), encoding="utf-8")
    docs = corpus.FileDocuments(sorted(str(f) for f in tmp_path.glob("*.txt")))
    ends = []
    monkeypatch.setattr(datamodule.TokenisingProgress, "__exit__", lambda self, *exc: ends.append((self.done, self.total)))
    datamodule.write_tokens(build_tokenizer("char", docs), docs, tmp_path / "t.bin", np.uint16)
    assert ends == [(docs.bytes_hint, docs.bytes_hint)] and docs.bytes_hint > sum(len(d) for d in docs)


def test_a_sources_settings_are_typed_and_an_unknown_one_is_named(tmp_path):
    """Each source's settings are one dataclass (one default each): a misspelt key is not silently ignored, a
    value of the wrong type is refused, and the seeded split's defaults are stated once (sources.Split)."""
    from attnlab.data import sources
    from attnlab.data.sources import Split, text_files
    from attnlab.errors import ConfigError
    with pytest.raises(ConfigError, match=r"dataset.val_fracton is not a setting of the text_files source; valid: "
                                          r"\['path', 'split_seed', 'test_fraction', 'val_fraction'\]"):
        sources.settings_of({"name": "mine", "source": "text_files", "path": "x.txt", "val_fracton": 0.2})
    with pytest.raises(ConfigError, match=r"dataset.text_field=3 must be a string"):
        sources.settings_of({"source": "jsonl", "path": "x.jsonl", "text_field": 3})
    settings = sources.settings_of({"name": "mine", "source": "text_files", "path": "x.txt"})
    assert isinstance(settings, text_files.Settings) and (settings.val_fraction, settings.split_seed) == \
        (Split.val_fraction, Split.split_seed) == (0.05, 1234)
    for name in sources.SOURCE_MODULES:  # every source declares its settings
        assert sources.setting_names(name), name


def test_a_misspelt_dataset_setting_stops_a_run_before_any_data(make_cfg):
    from attnlab.errors import ConfigError
    from attnlab.spec import RunSpec
    cfg = make_cfg(["mode=debug", "+dataset.val_plays_=4"])
    with pytest.raises(ConfigError, match=r"dataset.val_plays_ is not a setting of the shakespeare source"):
        RunSpec.from_hydra(cfg)


@pytest.mark.parametrize("n_tokens,context", [(101, 16), (33, 16), (17, 16), (10, 16)])
def test_strided_evaluation_windows_score_every_target_once_with_the_most_context(n_tokens, context):
    """EvalWindows(stride=S): windows S apart, each target counted once; S = the context is today's windows
    exactly; after the first window every counted target has at least context - S tokens before it."""
    import torch
    from attnlab.data.datamodule import IGNORE, EvalWindows
    from attnlab.errors import ConfigError
    tokens = np.arange(n_tokens, dtype=np.int64)
    side_by_side = EvalWindows(tokens, context)
    same = EvalWindows(tokens, context, stride=context)
    assert len(same) == len(side_by_side) and all(torch.equal(a, b) for i in range(len(same))
                                                  for a, b in zip(same[i], side_by_side[i]))
    c = min(context, n_tokens - 1)
    for stride in (1, 3, c // 2 or 1, c):
        windows = EvalWindows(tokens, context, stride=stride)
        scored = []
        for i in range(len(windows)):
            x, y = windows[i]
            assert len(x) == c
            for p in (y != IGNORE).nonzero().flatten().tolist():
                scored.append(int(y[p]))
                assert i == 0 or p >= c - stride  # the target at window position p sees p + 1 tokens
        assert sorted(scored) == list(range(1, n_tokens)), stride  # every target, once
    with pytest.raises(ConfigError, match=r"stride=17 must be in \[1, 16\]"):
        EvalWindows(np.arange(40), 16, stride=17)
