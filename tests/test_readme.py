"""The README's measured figures are the recorded results beside them (benchmarks/results/,
data/repro/): regenerate with `python benchmarks/readme_figures.py [--run]`."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_figures_match_the_recorded_results():
    spec = importlib.util.spec_from_file_location("readme_figures",
                                                  REPO / "benchmarks" / "readme_figures.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    text = (REPO / "README.md").read_text()
    blocks = figures.BLOCK.findall(text)
    assert {b[1] for b in blocks} == set(figures.RENDER), "a figures block is missing"
    assert figures.rendered(text) == text, \
        "README figures differ from benchmarks/results: run benchmarks/readme_figures.py"
