"""Texts: from a string to token ids.

:mod:`.prep` holds the clean-up steps a tokenizer.json cannot express (open_clip, SigLIP);
:mod:`.tokenizer` encodes, cuts and pads texts for a text tower; :mod:`.pairs` encodes
(query, document) pairs for a reranker.
"""
