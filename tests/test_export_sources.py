"""What `clipeval export` / `eval --model` take as a source, refused up front when it cannot be one:
a local file is never sent to the Hub (F23), a --pretrained file that is not weights is named as
such (F37); library errors come out as one line, each library log record once."""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("open_clip")

import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from clipeval.cli.main import cli  # noqa: E402
from clipeval.engine.errors import ExportError  # noqa: E402
from clipeval.export.hub import MAX_LIBRARY_TEXT, adopt_hub_logging, library_text  # noqa: E402
from clipeval.export.openclip_source import check_weights_file, weights_format  # noqa: E402


def _state():
    return {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3)}


def test_weights_format_knows_what_torch_safetensors_and_numpy_write(tmp_path):
    """The oracle is the writers themselves: every format they produce is recognised."""
    from safetensors.torch import save_file

    torch.save(_state(), tmp_path / "zip.pt")
    torch.save(_state(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    for protocol in (2, 3, 4, 5):
        torch.save(_state(), tmp_path / f"legacy{protocol}.bin", _use_new_zipfile_serialization=False,
                   pickle_protocol=protocol)
    save_file(_state(), str(tmp_path / "w.safetensors"))
    np.savez(tmp_path / "w.npz", w=np.ones(3))
    for f in sorted(tmp_path.iterdir()):
        check_weights_file(f)  # does not raise
        assert weights_format(f.read_bytes()[:16]) is not None, f.name


BAD_WEIGHTS = [b"garbage\n", b"", b"\0" * 64, b'{"w": [1, 2]}', b"\x89PNG\r\n\x1a\n" + b"\0" * 8, b"PK\x05\x06",
               b"\x80\x09junk", (3).to_bytes(8, "little") + b"[]x", "ünïcode weights".encode()]


@pytest.mark.parametrize("content", BAD_WEIGHTS)
def test_a_pretrained_file_that_is_not_weights_is_one_clear_line(tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(ExportError) as err:
        check_weights_file(bad)
    assert "is not a PyTorch or safetensors weights file" in err.value.message and "\n" not in err.value.message
    res = CliRunner().invoke(cli, ["eval", "--model", "ViT-B-32", "--pretrained", str(bad), "--data-dir", str(tmp_path),
                                   "--output-dir", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.stderr.count("error:") == 1 and len(res.stderr.strip().splitlines()) == 2, res.stderr
    assert f"{bad} is not a PyTorch or safetensors weights file" in res.stderr and "weights_only" not in res.stderr


def test_a_local_file_as_source_never_goes_to_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    asked = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: asked.append(("file", a, k)))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: asked.append(("snapshot", a, k)))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d1").mkdir()
    files = ["d1/image_queries.jsonl", "model", "org-model.bin", "d1/weights.safetensors"]
    for name in files:
        (tmp_path / name).write_text("x\n")
    for name in files:
        for argv in (["export", name, "-o", "bx"], ["eval", "--model", name, "--data-dir", "d1", "--output-dir", "o"]):
            res = CliRunner().invoke(cli, argv)
            assert res.exit_code == 2 and res.stderr.count("error:") == 1, (argv, res.output)
            assert f"{name} is a file" in res.stderr and "Traceback" not in res.output
    assert asked == [] and not (tmp_path / "bx").exists()


def test_library_errors_are_one_line_and_hub_records_print_once(capsys):
    exc = RuntimeError("An error happened.\nPlease check your connection.\n\n" + "x " * 400)
    text = library_text(exc)
    assert "\n" not in text and text.startswith("An error happened. Please check") and len(text) == MAX_LIBRARY_TEXT
    assert library_text(ValueError()) == "ValueError"

    from clipeval.cli.console import setup_logging

    setup_logging(True)
    adopt_hub_logging()
    logging.getLogger("huggingface_hub.utils._http").warning("retrying the HEAD request")
    assert capsys.readouterr().err.count("retrying the HEAD request") == 1


def test_open_clips_own_error_record_is_dropped_when_it_raises(capsys):
    from clipeval.cli.console import setup_logging
    from clipeval.export.openclip_export import _errors_held_for_the_exception

    setup_logging(True)
    with pytest.raises(RuntimeError):
        with _errors_held_for_the_exception():
            logging.error("Failed to download weights")  # open_clip logs through the root logger, then raises
            raise RuntimeError("Failed to download weights")
    assert "Failed to download" not in capsys.readouterr().err
    with _errors_held_for_the_exception():
        logging.error("an error it went on after")
        logging.warning("a warning")
    err = capsys.readouterr().err
    assert err.count("an error it went on after") == 1 and err.count("a warning") == 1
