"""`clipeval export`: checkpoint -> ONNX model bundle."""

from __future__ import annotations

import click

from .console import emit, setup_logging
from .options import Int, verbosity_option


@click.command("export")
@click.argument("source")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Bundle directory to create.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "both"]), default="fp32", show_default=True)
@click.option("--opset", type=Int(14), default=17, show_default=True)
@click.option("--hub", type=click.Choice(["hf", "modelscope"]), default="hf", show_default=True,
              help="Where a SOURCE that is not a local directory is downloaded from.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of SOURCE.")
@click.option("--pretrained", default=None, metavar="TAG|FILE",
              help="open_clip pretrained tag or weights file, when SOURCE is an open_clip architecture (ViT-B-32).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists and is not empty.")
@click.option("--no-validate", is_flag=True, help="Skip the PyTorch vs onnxruntime parity check.")
@verbosity_option
def export_cmd(source, out_dir, precision, opset, hub, revision, pretrained, force, no_validate, quiet):
    """Export a checkpoint to a verified ONNX model bundle.

    SOURCE is a directory written by save_pretrained or a hub id (CLIPModel, ChineseCLIPModel,
    SiglipModel), or an open_clip model: an architecture with --pretrained TAG|FILE, hf-hub:org/name,
    or a folder holding open_clip_config.json. --precision fp16 / int8 add that variant beside fp32
    and make it the default; both = fp32 + fp16 (default fp32). See docs/export.md.
    """
    from clipeval.engine.demo import DEMO_MODEL_DIR, is_demo_name
    from clipeval.engine.errors import ExportError
    from clipeval.engine.fsutil import check_writable_dir
    from clipeval.export import export_checkpoint

    setup_logging(not quiet)
    if is_demo_name(source):
        raise ExportError("`demo` names the embedded demo model, which is a model bundle already; there is "
                          "no checkpoint to export",
                          f"pass --model demo to eval, text-eval or bench as it is, or copy {DEMO_MODEL_DIR} "
                          "to use the bundle elsewhere")
    out_dir = check_writable_dir(out_dir, "bundle folder (-o)")  # `~` expanded: the folder checked is the one written
    path = export_checkpoint(source, out_dir, precision=precision, opset=opset, force=force,
                             validate=not no_validate, hub=hub, revision=revision, pretrained=pretrained)
    emit({"bundle": str(path)})
