"""Shards of a line file: every line in exactly one shard, numbered as an
editor numbers it, whatever the line endings; a changed input is caught."""
import pytest

from spacy_padellm.annotation.records import BadRecord, Record
from spacy_padellm.annotation.shards import InputChanged, lay_out, read_shard


def test_shards_cover_every_line_once_with_its_number(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"one\r\ntwo has a lone \r inside\n\nfour\nfive \xff\nsix")  # no final newline
    shards = lay_out(path, "text", 2)
    assert [(s.first, s.count) for s in shards] == [(1, 2), (3, 2), (5, 2)]
    items = [item for shard in shards for item in read_shard(path, "text", shard, "text", "id")]
    assert [item.position for item in items] == [1, 2, 3, 4, 5, 6]
    assert [item.text for item in items if isinstance(item, Record)] == ["one", "two has a lone \r inside", "four", "six"]
    bad = [item for item in items if isinstance(item, BadRecord)]
    assert [(b.position, b.error.split(":")[0]) for b in bad] == [(3, "empty line"), (5, "not UTF-8")]


def test_a_shard_whose_bytes_changed_is_refused(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n', encoding="utf8")
    (shard,) = lay_out(path, "jsonl", 10)
    path.write_text('{"text": "a"}\n{"text": "c"}\n', encoding="utf8")
    with pytest.raises(InputChanged, match="changed while it was being annotated"):
        list(read_shard(path, "jsonl", shard, "text", "id"))
    with pytest.raises(ValueError, match="--shard-size"):
        lay_out(path, "jsonl", 0)
