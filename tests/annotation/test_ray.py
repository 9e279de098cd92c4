"""`annotate --ray` on a local Ray cluster: one Ray actor is killed half way
and every input doc still appears exactly once."""
import sys

import pytest

from tests.annotation.conftest import read_jsonl, write_corpus
from tests.annotation.test_annotate import run

pytest.importorskip("ray.data")
from spacy_padellm.annotation.ray_runner import actor_pids  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds actor processes in /proc")


def test_killed_actor_loses_and_duplicates_nothing(tmp_path, slow_pipeline, code_file, monkeypatch):
    # The first actor to reach its 10th doc (past its first batch of two
    # shards of 4) kills itself: a kill at a known point, not a race against
    # a watching thread, which missed the run on a loaded machine.
    marker = tmp_path / "killed.pid"
    monkeypatch.setenv("ANNOTATE_TEST_DELAY", "0.05")  # inherited by the actors
    monkeypatch.setenv("ANNOTATE_TEST_KILL_AT", "10")
    monkeypatch.setenv("ANNOTATE_TEST_KILL_MARKER", str(marker))
    ids = write_corpus(tmp_path / "in.jsonl", 40)
    out = tmp_path / "out"
    numbers = run(tmp_path, slow_pipeline, out, code=str(code_file), shard_size=4, batch_size=2,
                  ray="local[2]", actors=2)
    assert marker.exists(), "no actor was killed during the run"
    killed = int(marker.read_text())
    records = read_jsonl(sorted(out.glob("part-*.jsonl")))
    assert len(records) == len(ids) and sorted(r["id"] for r in records) == sorted(ids)
    assert numbers["docs"] == len(ids)
    assert not list(out.rglob("*.tmp-*"))
    assert killed not in actor_pids()
