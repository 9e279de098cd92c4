"""`annotate` end to end on the memorizing tiny model: formats, pass-through
fields, the errors file, resume after a killed run, and settings checks."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import spacy
from spacy.tokens import DocBin

from spacy_padellm.annotation.run import annotate
from spacy_padellm.annotation.worker import Job
from spacy_padellm.cli import main
from tests.annotation.conftest import read_jsonl, write_corpus
from tests.conftest import MEMORIZED


def run(tmp_path, pipeline, output, **options):
    source = options.pop("input", tmp_path / "in.jsonl")
    job = Job(input=str(source), input_format=options.pop("input_format", "jsonl"), output=str(output),
              output_format=options.pop("output_format", ""), pipeline=str(pipeline),
              **{k: options.pop(k) for k in list(options) if k in Job.__dataclass_fields__})
    return annotate(job, quiet=True, say=lambda text: None, **options)


def expected_entities(pipeline):
    nlp = spacy.load(pipeline)
    return {text: [(e.start_char, e.end_char, e.label_) for e in nlp(text).ents] for text, _ in MEMORIZED}


def test_jsonl_directory_output_has_every_doc_once_with_entities(tmp_path, saved_pipeline):
    ids = write_corpus(tmp_path / "in.jsonl", 8, bad_lines=True)
    numbers = run(tmp_path, saved_pipeline, tmp_path / "out", shard_size=3)
    parts = sorted((tmp_path / "out").glob("part-*.jsonl"))
    assert len(parts) == 3  # 9 lines in shards of 3
    records = read_jsonl(parts)
    assert [r["id"] for r in records] == ids
    assert all(r["source"] in ("s0", "s1") and r["text"] for r in records)
    want = expected_entities(saved_pipeline)
    for record in records:
        assert [(e["start"], e["end"], e["label"]) for e in record["entities"]] == want[record["text"]]
        assert all(0 < e["score"] <= 1 for e in record["entities"])
    # The memorizing model finds the gold mentions of its texts.
    found = {r["text"]: {r["text"][e["start"]:e["end"]] for e in r["entities"]} for r in records}
    assert found[MEMORIZED[2][0]] >= {"Nadim Ladki", "Al-Ain"}
    errors = read_jsonl([tmp_path / "out" / "errors.jsonl"])
    assert [(e["line"], e["record"]) for e in errors] == [(4, "{not json")]
    assert numbers["docs"] == 8 and numbers["errors"] == 1
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["totals"]["docs"] == 8


def test_one_file_outputs_and_text_and_spacy_inputs(tmp_path, saved_pipeline):
    lines = [MEMORIZED[0][0], "", MEMORIZED[1][0]]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n", encoding="utf8")
    run(tmp_path, saved_pipeline, tmp_path / "out.jsonl", input=tmp_path / "in.txt", input_format="text")
    records = read_jsonl([tmp_path / "out.jsonl"])
    assert [(r["id"], r["text"]) for r in records] == [(1, lines[0]), (3, lines[2])]
    assert read_jsonl([tmp_path / "out.errors.jsonl"])[0]["line"] == 2
    assert not (tmp_path / "out.jsonl.parts").exists()
    with pytest.raises(SystemExit, match="--overwrite"):
        run(tmp_path, saved_pipeline, tmp_path / "out.jsonl", input=tmp_path / "in.txt", input_format="text")
    # .spacy out keeps ids and fields in user_data; .spacy in reads them back.
    write_corpus(tmp_path / "in.jsonl", 4)
    run(tmp_path, saved_pipeline, tmp_path / "out.spacy")
    docs = list(DocBin().from_disk(tmp_path / "out.spacy").get_docs(spacy.blank("en").vocab))
    assert [d.user_data["id"] for d in docs] == [f"doc-{i}" for i in range(4)]
    assert docs[2].user_data["source"] == "s0" and docs[2].ents
    run(tmp_path, saved_pipeline, tmp_path / "again.jsonl", input=tmp_path / "out.spacy", input_format="spacy")
    again = read_jsonl([tmp_path / "again.jsonl"])
    assert [r["id"] for r in again] == [f"doc-{i}" for i in range(4)]
    want = expected_entities(saved_pipeline)
    assert all([(e["start"], e["end"], e["label"]) for e in r["entities"]] == want[r["text"]] for r in again)


def test_a_doc_that_breaks_the_pipeline_goes_to_the_errors_file(tmp_path, slow_pipeline, code_file):
    write_corpus(tmp_path / "in.jsonl", 5)
    with (tmp_path / "in.jsonl").open("a") as f:
        f.write(json.dumps({"id": "boom", "text": "It says BOOM here ."}) + "\n")
    run(tmp_path, slow_pipeline, tmp_path / "out", code=str(code_file), batch_size=4)
    records = read_jsonl(sorted((tmp_path / "out").glob("part-*.jsonl")))
    assert [r["id"] for r in records] == [f"doc-{i}" for i in range(5)]
    (error,) = read_jsonl([tmp_path / "out" / "errors.jsonl"])
    assert error["line"] == 6 and error["id"] == "boom" and "BOOM" in error["error"]


def test_resume_refuses_other_settings_and_a_changed_input(tmp_path, saved_pipeline):
    write_corpus(tmp_path / "in.jsonl", 4)
    run(tmp_path, saved_pipeline, tmp_path / "out", shard_size=2)
    with pytest.raises(SystemExit, match="text_field"):
        run(tmp_path, saved_pipeline, tmp_path / "out", shard_size=2, text_field="body")
    write_corpus(tmp_path / "in.jsonl", 3)  # a different last shard
    with pytest.raises(SystemExit, match="input changed"):
        run(tmp_path, saved_pipeline, tmp_path / "out", shard_size=2)
    run(tmp_path, saved_pipeline, tmp_path / "out", shard_size=2, overwrite=True)
    assert len(read_jsonl((tmp_path / "out").glob("part-*.jsonl"))) == 3
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="not the output of an annotate run"):
        run(tmp_path, saved_pipeline, tmp_path / "other")
    with pytest.raises(SystemExit, match="not deleting it"):
        run(tmp_path, saved_pipeline, tmp_path / "other", overwrite=True)
    assert (tmp_path / "other" / "mine.txt").read_text() == "keep me"


def test_killed_run_resumes_without_redoing_or_duplicating(tmp_path, slow_pipeline, code_file):
    ids = write_corpus(tmp_path / "in.jsonl", 24)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "spacy_padellm", "annotate", str(tmp_path / "in.jsonl"), str(out),
               "--pipeline", str(slow_pipeline), "--code", str(code_file), "--shard-size", "4", "--batch-size", "2"]
    env = {**os.environ, "ANNOTATE_TEST_DELAY": "0.3"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list((out / ".state").glob("part-*.json")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in (out / ".state").glob("part-*.json")}
    assert 1 <= len(done_before) < 6, "the run was not interrupted half way"
    resumed = subprocess.run(command, env={**os.environ, "ANNOTATE_TEST_DELAY": "0"}, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done_before)} of 6 shards are done" in resumed.stderr
    records = read_jsonl(sorted(out.glob("part-*.jsonl")))
    assert sorted(r["id"] for r in records) == sorted(ids) and len(records) == len(ids)
    assert {name: (out / ".state" / name).stat().st_mtime_ns for name in done_before} == done_before
    assert not list(out.rglob("*.tmp-*"))


def test_n_process_gives_the_single_process_output(tmp_path, saved_pipeline):
    write_corpus(tmp_path / "in.jsonl", 6)
    run(tmp_path, saved_pipeline, tmp_path / "one.jsonl", shard_size=2)
    run(tmp_path, saved_pipeline, tmp_path / "two.jsonl", shard_size=2, n_process=2)
    one, two = read_jsonl([tmp_path / "one.jsonl"]), read_jsonl([tmp_path / "two.jsonl"])
    # Same docs, same spans; a score may differ in its last written digit
    # (0.472049 against 0.47205): a forked process computes with one torch
    # thread, so its sums run in another order.
    assert [without_scores(r) for r in two] == [without_scores(r) for r in one]
    for a, b in zip(one, two):
        assert [e["score"] for e in b["entities"]] == pytest.approx([e["score"] for e in a["entities"]], abs=1e-4)


def without_scores(record: dict) -> dict:
    return {**record, "entities": [{k: v for k, v in e.items() if k != "score"} for e in record["entities"]]}


def test_cli_passes_config_overrides_and_refuses_bad_ones(tmp_path, saved_pipeline, capsys):
    write_corpus(tmp_path / "in.jsonl", 2)
    main(["annotate", str(tmp_path / "in.jsonl"), str(tmp_path / "out"), "--pipeline", str(saved_pipeline),
          "--quiet", "--components.padellm_ner.annotate_ents", "false"])
    records = read_jsonl((tmp_path / "out").glob("part-*.jsonl"))
    # doc.ents stays empty; the span group (now more than doc.ents) is written as "spans".
    assert len(records) == 2 and all(r["entities"] == [] and r["spans"] for r in records)
    settings = json.loads((tmp_path / "out" / "manifest.json").read_text())["settings"]
    assert settings["overrides"] == {"components.padellm_ner.annotate_ents": "False"}
    assert "docs/s" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="overrides do not fit"):
        main(["annotate", str(tmp_path / "in.jsonl"), str(tmp_path / "y"), "--pipeline", str(saved_pipeline),
              "--components.padellm_ner.no_such_setting", "3"])
    with pytest.raises(SystemExit, match="no such directory or installed package"):
        main(["annotate", str(tmp_path / "in.jsonl"), str(tmp_path / "x"), "--pipeline", str(tmp_path / "nope")])


def test_ray_missing_names_the_install_command(tmp_path, saved_pipeline, monkeypatch):
    write_corpus(tmp_path / "in.jsonl", 1)
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SystemExit, match=r"pip install 'spacy-padellm\[ray\]'"):
        run(tmp_path, saved_pipeline, tmp_path / "out", ray="local[1]")


def test_the_console_script_runs_the_same_commands(tmp_path, saved_pipeline):
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "spacy-padellm"]
    assert script.load() is main
    write_corpus(tmp_path / "in.jsonl", 1)
    done = subprocess.run([str(Path(sys.executable).parent / "spacy-padellm"), "annotate", str(tmp_path / "in.jsonl"),
                           str(tmp_path / "out.jsonl"), "--pipeline", str(saved_pipeline), "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [r["id"] for r in read_jsonl([tmp_path / "out.jsonl"])] == ["doc-0"]


def test_parquet_shards_hold_the_same_records(tmp_path, saved_pipeline):
    parquet = pytest.importorskip("pyarrow.parquet")
    write_corpus(tmp_path / "in.jsonl", 5)
    run(tmp_path, saved_pipeline, tmp_path / "jsonl", shard_size=2)
    run(tmp_path, saved_pipeline, tmp_path / "parquet", shard_size=2, output_format="parquet")
    parts = sorted((tmp_path / "parquet").glob("part-*.parquet"))
    assert len(parts) == 3
    rows = [row for part in parts for row in parquet.read_table(part).to_pylist()]
    assert rows == read_jsonl(sorted((tmp_path / "jsonl").glob("part-*.jsonl")))
    with pytest.raises(SystemExit, match="Parquet output goes into a directory"):
        run(tmp_path, saved_pipeline, tmp_path / "one.parquet")
