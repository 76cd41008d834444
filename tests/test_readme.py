"""The measured figures of the README and docs/ are the recorded results beside them
(benchmarks/results/, data/repro/): regenerate with `python benchmarks/readme_figures.py
[--run]`. The README stays a first screen: at most 200 lines."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_figures_match_the_recorded_results():
    spec = importlib.util.spec_from_file_location("readme_figures",
                                                  REPO / "benchmarks" / "readme_figures.py")
    figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(figures)
    names = []
    for page in figures.pages():
        text = page.read_text()
        names += [b[1] for b in figures.BLOCK.findall(text)]
        assert figures.rendered(text) == text, \
            f"{page.name}: figures differ from benchmarks/results: run benchmarks/readme_figures.py"
    assert sorted(names) == sorted(figures.RENDER), "a figures block is missing or doubled"


def test_the_readme_is_a_first_screen_and_its_links_resolve():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    import re

    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (REPO / target).exists(), target
