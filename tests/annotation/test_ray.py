"""`annotate --ray` on a local Ray cluster: one Ray actor is killed half way
and every input doc still appears exactly once."""
import os
import signal
import sys
import threading
import time
from typing import List

import pytest

from tests.annotation.conftest import read_jsonl, write_corpus
from tests.annotation.test_annotate import run

pytest.importorskip("ray.data")
from spacy_padellm.annotation.ray_runner import actor_pids  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds actor processes in /proc")


def test_killed_actor_loses_and_duplicates_nothing(tmp_path, slow_pipeline, code_file, monkeypatch):
    monkeypatch.setenv("ANNOTATE_TEST_DELAY", "0.2")  # inherited by the actors
    ids = write_corpus(tmp_path / "in.jsonl", 40)
    out = tmp_path / "out"
    killed: List[int] = []

    def kill_one_actor() -> None:
        deadline = time.time() + 180
        while time.time() < deadline:
            if list((out / ".state").glob("part-*.json")) and actor_pids():
                victim = actor_pids()[0]
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_actor, daemon=True)
    killer.start()
    numbers = run(tmp_path, slow_pipeline, out, code=str(code_file), shard_size=4, batch_size=2,
                  ray="local[2]", actors=2)
    killer.join(timeout=5)
    assert killed, "no actor was killed during the run"
    records = read_jsonl(sorted(out.glob("part-*.jsonl")))
    assert len(records) == len(ids) and sorted(r["id"] for r in records) == sorted(ids)
    assert numbers["docs"] == len(ids)
    assert not list(out.rglob("*.tmp-*"))
    assert all(pid not in actor_pids() for pid in killed)
