"""examples/python/attention_notebook.py, the notebook-style example, runs as a script: it trains a GPT, plots its
attention maps and m with matplotlib, trains a model written in Python, and checks what it plots."""
import pathlib
import runpy
import sys

NOTEBOOK = pathlib.Path(__file__).resolve().parents[2] / "examples" / "python" / "attention_notebook.py"


def test_notebook_runs_and_writes_its_figures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ../shared here: the notebook trains on its own verse
    monkeypatch.setattr(sys, "argv", [str(NOTEBOOK), str(tmp_path / "out")])
    runpy.run_path(str(NOTEBOOK), run_name="__main__")
    for figure in ("attention.png", "metric.png", "loss.png"):
        assert (tmp_path / "out" / figure).stat().st_size > 1000, figure
