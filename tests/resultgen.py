"""Result files made the way users make them: ``clipeval eval`` on a small image dataset
(import as ``from resultgen import ...``)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from clipeval.cli.main import cli
from datagen import noise_image, write_dataset


def image_dataset(root, n=12, words=("cat", "dog")):
    """``n`` noise images on disk, two captions each (the second shared by every fourth image)."""
    rows = [{"image_path": f"img{i}.png", "query": [f"a photo of a {words[0]} {i}", f"a {words[1]} {i % 4}"]}
            for i in range(n)]
    return write_dataset(root, rows, {f"img{i}.png": noise_image(i) for i in range(n)})


def evaluate(model, data, out, *extra, dataset=None):
    """``clipeval eval`` of ``model`` on ``data`` into ``out``; returns (result file, result)."""
    args = ["eval", "--model", str(model), "--data-dir", str(data), "--output-dir", str(out), "--quiet",
            *map(str, extra)]
    if dataset:
        args += ["--dataset", dataset]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    return Path(result["meta"]["result_file"]), result
