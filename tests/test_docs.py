"""The generated reference pages are current: docs/config.md lists every configuration key as the dataclasses
declare it, and docs/reasons.md every reason the filter gives. `make docs` rewrites them."""

from __future__ import annotations

import dataclasses
import re

import pytest

from cotdistill.reference import DOCS, PAGES, section_classes
from cotdistill.stages.filter.phases import REASONS
from tests.conftest import REPO


@pytest.mark.parametrize("name", sorted(PAGES))
def test_the_generated_page_is_current(name):
    assert (DOCS / name).read_text() == PAGES[name](), f"docs/{name} is stale: run `make docs`"


def test_every_config_key_is_in_the_reference():
    text = (DOCS / "config.md").read_text()
    for cls, _ in section_classes():
        for f in dataclasses.fields(cls):
            if "other_keys" in f.metadata:  # a section's TRL fields, passed through: no key of its own
                assert "- every other key: " in text, f"{cls.__name__}.{f.name}"
            elif "key_named_by" not in f.metadata:
                assert f"- `{f.name}` (" in text, f"{cls.__name__}.{f.name}"


def test_every_filter_reason_is_in_the_reference():
    text = (DOCS / "reasons.md").read_text()
    assert set(re.findall(r"^\| `(\w+)` \|", text, re.M)) == set(REASONS)


def test_every_figure_block_is_made_from_its_figures_file():
    from cotdistill.reference import BENCHMARKS, DEMOS, REPO as ROOT, with_figures

    for name, (command, page) in {**DEMOS, **BENCHMARKS}.items():
        text = (ROOT / page).read_text()
        assert f"<!-- figures: {name} -->" in text, f"{page} quotes no figures of {name}"
        if name in BENCHMARKS and not (ROOT / "docs" / "figures" / f"{name}.json").is_file():
            # a benchmark of an hour is run when it is run: until then its block is empty, quoting nothing
            assert f"<!-- figures: {name} -->\n<!-- /figures -->" in text, f"{page}: figures of {name} with no file"
            continue
        assert (ROOT / "docs" / "figures" / f"{name}.json").is_file(), f"run `make figures {name}` or `{command}`"
        assert with_figures(text) == text, f"{page}: its {name} figures are stale: run `make docs`"


def test_every_doc_page_is_linked_from_the_readme():
    readme = (REPO / "README.md").read_text()
    for page in DOCS.glob("*.md"):
        assert f"docs/{page.name}" in readme, page.name
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (REPO / target).is_file(), target
