"""One verbosity for clipeval and the libraries it drives (cli/console.setup_logging)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipeval.cli.console import _VerbosityFilter

ORT_DIR = Path(__import__("onnxruntime").__file__).parent
ORT_QUANTIZER = str(ORT_DIR / "quantization" / "onnx_quantizer.py")
ORT_FUSION = str(ORT_DIR / "transformers" / "fusion_base.py")
ELSEWHERE = "/somewhere/site-packages/transformers/modeling_utils.py"

# (logger name, level, file that logged) -> shown when verbose, shown with -q
CASES = [
    (("clipeval.engine.runner", logging.INFO, "x.py"), (True, False)),
    (("clipeval.engine.runner", logging.WARNING, "x.py"), (True, True)),
    (("clipeval", logging.DEBUG, "x.py"), (False, False)),
    (("transformers.modeling_utils", logging.INFO, ELSEWHERE), (False, False)),
    (("transformers.modeling_utils", logging.WARNING, ELSEWHERE), (True, False)),
    (("transformers.modeling_utils", logging.ERROR, ELSEWHERE), (True, True)),
    (("root", logging.INFO, ORT_QUANTIZER), (False, False)),  # "Quantization parameters for tensor ..."
    (("root", logging.WARNING, ORT_QUANTIZER), (False, False)),  # "Please consider to run pre-processing ..."
    (("root", logging.ERROR, ORT_QUANTIZER), (True, True)),
    (("fusion_base", logging.INFO, ORT_FUSION), (False, False)),  # "Fused Attention: 2"
    (("fusion_base", logging.WARNING, ORT_FUSION), (False, False)),
    (("py.warnings", logging.WARNING, "/usr/lib/python3/warnings.py"), (True, False)),
    (("numba.core", logging.WARNING, "/site-packages/numba/core/x.py"), (True, False)),
]


@pytest.mark.parametrize("record, shown", CASES, ids=[f"{r[0]}-{logging.getLevelName(r[1])}" for r, _ in CASES])
def test_what_each_verbosity_shows(record, shown):
    name, level, path = record
    rec = logging.LogRecord(name, level, path, 1, "message", None, None)
    verbose = _VerbosityFilter(logging.INFO, logging.WARNING)
    quiet = _VerbosityFilter(logging.WARNING, logging.ERROR)
    assert (verbose.filter(rec), quiet.filter(rec)) == shown


@pytest.mark.slow
def test_an_int8_export_says_only_what_clipeval_has_to_say(tmp_path):
    """A 2-layer int8 export used to print ~45 lines of onnxruntime's optimiser and quantizer and
    transformers' weight-loading bar; in a fresh process, as a user runs it."""
    from fixtures_ckpt import make_tiny_clip_checkpoint

    ckpt = make_tiny_clip_checkpoint(tmp_path / "ckpt", seed=1)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY")}
    run = subprocess.run([sys.executable, "-m", "clipeval", "export", str(ckpt), "-o", str(tmp_path / "b"),
                          "--precision", "int8"], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert 1 <= len(lines) <= 3, run.stderr
    assert all(line.startswith("INFO clipeval.") for line in lines), run.stderr
    assert "Loading weights" not in run.stderr and "\r" not in run.stderr
