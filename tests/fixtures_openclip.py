"""Tiny open_clip models for tests, saved the way open_clip publishes them.

* :data:`TINY` holds three architectures, each a few hundred kilobytes apart from CLIP's
  49,408-token embedding: a ViT, the same ViT with QuickGELU, and a ModifiedResNet (BatchNorm,
  attention pooling). :func:`register_architectures` adds them to open_clip's registry with
  ``open_clip.add_model_config`` (names ``clipeval-tiny-*``), as a user's custom config would be.
* :func:`save_open_clip_folder` writes a random-weight model with
  ``open_clip.push_to_hf_hub.save_for_hf``: ``open_clip_config.json`` (``model_cfg`` +
  ``preprocess_cfg``) and ``open_clip_model.safetensors`` and/or ``open_clip_pytorch_model.bin``,
  the layout of the open_clip repositories on the Hugging Face Hub.
* :func:`populate_hf_cache` puts such a folder into a private Hugging Face cache as repository
  ``org/name`` (``refs/main`` + ``snapshots/<commit>/``), so ``huggingface_hub`` and open_clip
  find it with ``HF_HUB_OFFLINE=1``; :func:`register_pretrained_tag` adds a pretrained tag that
  points at such a repository to open_clip's table.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

CONTEXT_LENGTH = 16
TEXT = {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
TINY = {
    "clipeval-tiny-ViT": {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": TEXT,
    },
    "clipeval-tiny-ViT-quickgelu": {
        "embed_dim": 16,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": TEXT,
    },
    "clipeval-tiny-RN": {
        "embed_dim": 16,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 16},
        "text_cfg": TEXT,
    },
}


def register_architectures(config_dir) -> list[str]:
    """Write :data:`TINY` as ``<name>.json`` files into ``config_dir`` and register the folder with
    ``open_clip.add_model_config``; return the names."""
    import open_clip

    config_dir = Path(config_dir)
    config_dir.mkdir(parents=True, exist_ok=True)
    for name, cfg in TINY.items():
        (config_dir / f"{name}.json").write_text(json.dumps(cfg), encoding="utf-8")
    open_clip.add_model_config(config_dir)
    return list(TINY)


def random_model(arch: str, seed: int = 0, preprocess_cfg: dict | None = None):
    """A random-weight open_clip model of architecture ``arch`` (registered), in eval mode, with
    the BatchNorm running statistics made non-trivial so eval mode matters."""
    import open_clip
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(arch, pretrained=None, force_preprocess_cfg=preprocess_cfg or {})
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


class _NoTokenizerFiles:
    """save_for_hf saves the tokenizer beside the weights; SimpleTokenizer models ship none."""

    def save_pretrained(self, dest):
        pass


def save_open_clip_folder(path, arch: str, *, seed: int = 0, preprocess_cfg: dict | None = None,
                          weights: str = "safetensors", tokenizer=None) -> Path:
    """A folder in the layout open_clip publishes on the Hub, written by open_clip's ``save_for_hf``.

    ``weights``: ``"safetensors"``, ``"bin"`` or ``"both"``; ``preprocess_cfg`` overrides open_clip's
    defaults (resize_mode, interpolation, mean, std, fill_color); ``tokenizer``: an object with
    ``save_pretrained`` (an HFTokenizer's files), default none."""
    from open_clip.push_to_hf_hub import save_for_hf

    import open_clip

    path = Path(path)
    model = random_model(arch, seed, preprocess_cfg)
    model_cfg = open_clip.get_model_config(arch)
    safe = {"safetensors": True, "bin": False, "both": "both"}[weights]
    save_for_hf(model, tokenizer or _NoTokenizerFiles(), model_cfg, str(path), safe_serialization=safe)
    if preprocess_cfg:  # save_for_hf keeps mean, std, interpolation, resize_mode; fill_color too
        config = json.loads((path / "open_clip_config.json").read_text())
        config["preprocess_cfg"].update(preprocess_cfg)
        (path / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    return path


def save_weights_file(path, arch: str, *, seed: int = 0) -> Path:
    """``torch.save(model.state_dict(), path)``: a weights file for ``--pretrained FILE``."""
    import torch

    torch.save(random_model(arch, seed).state_dict(), path)
    return Path(path)


def populate_hf_cache(cache_dir, repo_id: str, folder) -> Path:
    """Put the files of ``folder`` into the Hugging Face cache ``cache_dir`` as repository
    ``repo_id`` at a fixed commit on ``main``; return the snapshot folder."""
    org, name = repo_id.split("/")
    repo = Path(cache_dir) / f"models--{org}--{name}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for f in Path(folder).iterdir():
        if f.is_file():
            shutil.copyfile(f, snapshot / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def register_pretrained_tag(arch: str, tag: str, repo_id: str) -> None:
    """Add ``tag`` for ``arch`` to open_clip's pretrained table, pointing at the Hub repository
    ``repo_id`` (open_clip then downloads ``open_clip_model.safetensors`` / ``open_clip_pytorch_model.bin``
    from it, or finds it in the Hugging Face cache)."""
    from open_clip import pretrained

    pretrained._PRETRAINED.setdefault(arch, {})[tag] = pretrained._pcfg(hf_hub=f"{repo_id}/")


BOOTSTRAP = """
import sys
sys.path.insert(0, {tests!r})
import fixtures_openclip as F
F.register_architectures({config_dir!r})
for arch, tag, repo in {tags!r}:
    F.register_pretrained_tag(arch, tag, repo)
from clipeval.cli.main import main
sys.argv = ["clipeval"] + {argv!r}
main()
"""


def cli_with_tiny_models(argv: list[str], config_dir, tags=()) -> list[str]:
    """A ``python -c`` command line running ``clipeval ARGV`` in a fresh process that first registers
    the tiny architectures and ``tags`` (``(arch, tag, repo_id)``)."""
    import sys

    code = BOOTSTRAP.format(tests=str(Path(__file__).parent), config_dir=str(config_dir), tags=list(tags),
                            argv=list(argv))
    return [sys.executable, "-c", code]


def save_hf_tokenizer_folder(path, *, seed: int = 0) -> Path:
    """An open_clip model whose text config names a Hugging Face tokenizer (``hf_tokenizer_name``,
    ``clean: canonicalize``) over a bidirectional text transformer pooled at the last position, as
    open_clip's SigLIP configs are: a BERT WordPiece ``BertTokenizerFast`` saved beside the weights
    (open_clip reads it from the folder), 16 positions."""
    import tempfile

    import open_clip
    import torch
    from open_clip.push_to_hf_hub import save_for_hf
    from transformers import BertTokenizerFast

    from fixtures_ckpt import write_wordpiece_vocab

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        vocab = write_wordpiece_vocab(Path(tmp) / "vocab.txt")
        hf = BertTokenizerFast(vocab=str(vocab), do_lower_case=True, model_max_length=CONTEXT_LENGTH)
    cfg = {
        "embed_dim": 16,
        "custom_text": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": len(hf), "hf_tokenizer_name": "bert-like",
                     "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 32, "heads": 2, "layers": 2,
                     "no_causal_mask": True, "pool_type": "last", "proj_bias": True, "pad_id": hf.pad_token_id},
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CustomTextCLIP(**{k: v for k, v in cfg.items() if k != "custom_text"}).eval()
    open_clip.model.set_model_preprocess_cfg(model, {"size": 32, "mode": "RGB", "mean": (0.5, 0.5, 0.5),
                                                     "std": (0.5, 0.5, 0.5), "interpolation": "bicubic",
                                                     "resize_mode": "squash", "fill_color": 0})
    save_for_hf(model, hf, cfg, str(path), safe_serialization=True)
    return path
