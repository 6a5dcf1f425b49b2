"""Builds the embedded demo: a tiny CLIP trained on procedurally drawn shapes, and its dataset.

- :mod:`.shapes` draws scenes (shape, colour, size, position) and writes their captions.
- :mod:`.train` trains a transformers ``CLIPModel`` on them, seeded and on CPU.
- :mod:`.build` runs it all: ``python -m clipeval.export.demo.build``.

The results ship in ``clipeval/engine/demo/`` (``model/`` bundle and ``data/``).
"""
