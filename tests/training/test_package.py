"""`spacy package` on a trained pipeline: the package installs, and loading
it brings the adapter back."""
import json
import subprocess
import sys

from spacy.training import Example
from thinc.api import Adam

from ..conftest import MEMORIZED, make_nlp, memorized_gold_docs

LOAD_AND_PREDICT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import en_padellm_tiny
nlp = en_padellm_tiny.load()
pipe = nlp.get_pipe("padellm_ner")
docs = list(nlp.pipe(json.loads(sys.argv[2])))
print(json.dumps({"adapter": pipe.shim.has_adapter,
                  "spans": [[[s.start, s.end, s.label_] for s in d.spans["padellm"]] for d in docs]}))
"""


def run(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_packaged_pipeline_installs_and_loads_the_adapter(tiny_model_dir, tmp_path):
    nlp = make_nlp(tiny_model_dir, labels=["LOC", "MISC", "PER"])
    examples = [Example(nlp.make_doc(ref.text), ref) for ref in memorized_gold_docs(nlp)]
    nlp.initialize(lambda: examples)
    optimizer = Adam(0.01, use_averages=False)
    for _ in range(5):
        nlp.update(examples, sgd=optimizer)
    texts = [text for text, _ in MEMORIZED]
    expected = [[[s.start, s.end, s.label_] for s in d.spans["padellm"]] for d in nlp.pipe(texts)]
    nlp.to_disk(tmp_path / "pipeline")

    (tmp_path / "packages").mkdir()
    run("-m", "spacy", "package", str(tmp_path / "pipeline"), str(tmp_path / "packages"),
        "--name", "padellm_tiny", "--version", "0.0.1", "--force")
    meta = json.loads((tmp_path / "packages" / "en_padellm_tiny-0.0.1" / "meta.json").read_text())
    assert any(req.startswith("spacy-padellm") for req in meta["requirements"])
    sdist = next((tmp_path / "packages" / "en_padellm_tiny-0.0.1" / "dist").glob("*.tar.gz"))
    run("-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet", "--target", str(tmp_path / "site"), str(sdist))
    out = run("-c", LOAD_AND_PREDICT, str(tmp_path / "site"), json.dumps(texts))
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["adapter"] is True
    assert result["spans"] == expected
