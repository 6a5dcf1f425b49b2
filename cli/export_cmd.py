"""`clipeval export`: checkpoint -> ONNX model bundle."""

from __future__ import annotations

import click

from .main import cli, emit, setup_logging, verbosity_option


@cli.command("export")
@click.argument("source")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Bundle directory to create.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "both"]), default="fp32", show_default=True)
@click.option("--opset", type=click.IntRange(min=14), default=17, show_default=True)
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists and is not empty.")
@click.option("--no-validate", is_flag=True, help="Skip the PyTorch vs onnxruntime parity check.")
@verbosity_option
def export_cmd(source, out_dir, precision, opset, force, no_validate, quiet):
    """Export a checkpoint (CLIP family) to a verified ONNX model bundle."""
    from clipeval.export import export_checkpoint

    setup_logging(not quiet)
    path = export_checkpoint(source, out_dir, precision=precision, opset=opset, force=force, validate=not no_validate)
    emit({"bundle": str(path)})
