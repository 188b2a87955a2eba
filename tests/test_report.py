"""Text formatting shared by the reports (nsrep.report): markdown tables and numbers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from nsrep.report import count_text, format_table, forms_table, markdown_table, ratio, scientific


def test_markdown_table_pads_every_column_to_its_widest_cell():
    lines = markdown_table(("form", "params"), [("training", 1234), ("deployed", 7)])
    assert lines == [
        "| form     | params |",
        "|----------|--------|",
        "| training | 1234   |",
        "| deployed | 7      |",
    ]


def test_markdown_table_header_wider_than_cells_and_no_rows():
    assert markdown_table(("a long header", "b"), [("x", 2.5)]) == [
        "| a long header | b   |",
        "|---------------|-----|",
        "| x             | 2.5 |",
    ]
    assert markdown_table(("h",), []) == ["| h |", "|---|"]


def test_markdown_table_refuses_ragged_rows():
    with pytest.raises(ValueError, match="needs 2 cells"):
        markdown_table(("a", "b"), [("only one",)])


def test_format_table_is_the_lines_joined():
    assert format_table(("k", "v"), [("x", 1)]) == "| k | v |\n|---|---|\n| x | 1 |"


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (4**20, "1.10e+12"),
        (999_999, "1.00e+06"),
        (7, "7.00e+00"),
        (10**400, "1.00e+400"),
        (0, "0"),
        (-1234, "-1.23e+03"),
    ],
)
def test_scientific(n, text):
    assert scientific(n) == text


@pytest.mark.parametrize(
    ("n", "exact", "text"),
    [
        (999_999, True, "999,999"),
        (10**6, True, "1,000,000 (1.00e+06)"),
        (4**20, True, "1,099,511,627,776 (1.10e+12)"),
        (4**20, False, "1.10e+12"),
        (80, False, "80"),
    ],
)
def test_count_text(n, exact, text):
    assert count_text(n, exact=exact) == text


def test_ratio():
    assert ratio(3, 2) == "1.50x"
    assert ratio(1, 3) == "0.33x"
    assert ratio(5, 0) == ratio(5, None) == "-"


def test_forms_table():
    result = SimpleNamespace(top1=91.256, top5=99.5, loss=0.123456, count=10000)
    assert forms_table([("training", result, 1234567), ("deployed", result, 89)]).splitlines() == [
        "| form     | images | top-1 (%) | top-5 (%) | loss   | params    |",
        "|----------|--------|-----------|-----------|--------|-----------|",
        "| training | 10,000 | 91.26     | 99.50     | 0.1235 | 1,234,567 |",
        "| deployed | 10,000 | 91.26     | 99.50     | 0.1235 | 89        |",
    ]
    assert forms_table([("deployed", result, 89)], split="the test split of X").splitlines()[0] == (
        "scored on the test split of X"
    )
    assert forms_table([("deployed", result, 89)], 1.5e-7).splitlines()[-1] == (
        "max relative logit difference (deployed vs training form): 1.50e-07"
    )
