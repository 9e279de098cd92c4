"""Pipelines and corpora for the `annotate` tests: the memorizing tiny
model saved to disk (its entities are known), and the same pipeline with a
component from a `--code` file that slows every doc down (so a run can be
interrupted half way), raises on a doc that contains BOOM, and can kill the
Ray actor that runs it at a given doc (ANNOTATE_TEST_KILL_AT)."""
import json
from pathlib import Path
from typing import List

import pytest

from tests.conftest import MEMORIZED

CODE = '''
import os, signal, time
from spacy.language import Language
from spacy_padellm.annotation.ray_runner import actor_pids

seen = 0

@Language.component("annotate_test_slow")
def slow(doc):
    global seen
    if "BOOM" in doc.text:
        raise ValueError("this doc says BOOM")
    time.sleep(float(os.environ.get("ANNOTATE_TEST_DELAY", "0")))
    seen += 1
    kill_at = int(os.environ.get("ANNOTATE_TEST_KILL_AT", "0"))
    if kill_at and seen == kill_at and os.getpid() in actor_pids():
        die_once(os.environ["ANNOTATE_TEST_KILL_MARKER"])
    return doc

def die_once(marker):
    """The first Ray actor to reach its kill_at-th doc writes its pid to
    `marker` and kills itself there, half way through a batch; the others
    (and the restarted actor, which finds the marker) go on."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
'''


def write_corpus(path: Path, n: int, bad_lines: bool = False) -> List[str]:
    """`n` JSONL records cycling through the memorized texts; returns ids."""
    ids = []
    with path.open("w", encoding="utf8") as f:
        for i in range(n):
            text = MEMORIZED[i % len(MEMORIZED)][0]
            ids.append(f"doc-{i}")
            f.write(json.dumps({"id": ids[-1], "text": text, "source": f"s{i % 2}"}) + "\n")
            if bad_lines and i == 2:
                f.write("{not json\n")
    return ids


def read_jsonl(paths) -> List[dict]:
    return [json.loads(line) for path in paths for line in Path(path).read_text(encoding="utf8").splitlines()]


@pytest.fixture(scope="module")
def saved_pipeline(memorized_nlp, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("annotate-pipeline") / "pipeline"
    memorized_nlp.to_disk(path)
    return path


@pytest.fixture(scope="module")
def code_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("annotate-code") / "slow.py"
    path.write_text(CODE, encoding="utf8")
    return path


@pytest.fixture(scope="module")
def slow_pipeline(saved_pipeline, code_file, tmp_path_factory) -> Path:
    import spacy
    from spacy import util

    util.import_file("annotate_test_code", str(code_file))
    nlp = spacy.load(saved_pipeline)
    nlp.add_pipe("annotate_test_slow")
    path = tmp_path_factory.mktemp("annotate-slow") / "pipeline"
    nlp.to_disk(path)
    return path
