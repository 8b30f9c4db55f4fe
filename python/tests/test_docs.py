"""The tutorial of docs/python.md runs as written: its ```python blocks, in order, in one namespace, in a
scratch folder (it writes files)."""
import pathlib
import re

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "python.md"


def test_tutorial_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), flags=re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 5, "docs/python.md lost its tutorial"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "tutorial"}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"docs/python.md block {number}", "exec"), namespace)
    # The namespace holds a model whose C++ side keeps the tutorial's Python layers, whose methods keep the
    # namespace: a cycle through C++ that the collector cannot see. A module's globals are cleared at exit; this
    # dict is cleared here.
    namespace.clear()
