"""The report in a real browser: headless Chromium over the DevTools protocol (tests/browser.py).

Skipped, with the reason in pytest's summary, where no Chromium binary is installed
(Debian: ``apt-get install -y chromium``).
"""

from __future__ import annotations

import pytest

from browser import chromium_binary, open_page
from resultgen import evaluate, image_dataset

pytestmark = pytest.mark.skipif(chromium_binary() is None,
                                reason="no chromium binary: apt-get install -y chromium to run the browser checks")

CHECKS = [
    'document.body.dataset.ready',  # the page's script ran to its end
    'document.querySelectorAll("#leaderboard tbody tr").length',
    'document.querySelectorAll(".curve svg path").length',
    'Array.from(document.querySelectorAll(".thumb-grid img")).map(i => i.complete && i.naturalWidth > 0)',
    # sorting: click the first metric twice (descending, then ascending) and read the column
    '''(() => {
        const th = document.querySelector('#leaderboard th[data-col="1"]');
        const column = () => Array.from(document.querySelectorAll("#leaderboard tbody tr"))
            .map(r => Number(r.cells[1].dataset.value));
        th.click(); const down = column();
        th.click(); const up = column();
        return [down, up];
    })()''',
    'document.querySelector("#leaderboard").getBoundingClientRect().height',
]


def test_the_harness_sees_errors_and_network(tmp_path):
    """The check below could fail: a page with a script error and a remote image is caught."""
    page = tmp_path / "bad.html"
    page.write_text('<html><body><img src="http://example.com/x.png"><script>undefinedFunction();</script></body></html>')
    run = open_page(page.as_uri(), ["1 + 1"])
    assert run.values == [2]
    assert any("undefinedFunction" in p for p in run.problems)
    assert "http://example.com/x.png" in run.requests and run.failed


def test_the_report_renders_in_chromium(tiny_bundle, tmp_path):
    from click.testing import CliRunner

    from clipeval.cli.main import cli

    data = image_dataset(tmp_path / "ds")
    evaluate(tiny_bundle, data, tmp_path / "a")
    evaluate("demo", data, tmp_path / "b")
    out = tmp_path / "report.html"
    r = CliRunner().invoke(cli, ["report", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(out), "--quiet"])
    assert r.exit_code == 0, r.output

    run = open_page(out.as_uri(), CHECKS)
    assert run.problems == []
    assert all(url == out.as_uri() or url.startswith("data:") for url in run.requests), run.requests
    ready, rows, curve_paths, thumbs, (down, up), height = run.values
    assert ready == "1" and rows == 2 and curve_paths > 10 and height > 50
    assert thumbs and all(thumbs)  # every thumbnail decoded
    assert down == sorted(down, reverse=True) and up == sorted(up) and sorted(down) == sorted(up)
