"""Models as onnxruntime sessions.

:mod:`.bundle` reads and verifies a model bundle; :mod:`.onnx` opens one tower as an
onnxruntime session on the provider asked for; :mod:`.model` loads a whole bundle's towers,
preprocessor and tokenizer at once (for tools and tests; a run opens towers through the
embedding stage, :mod:`clipeval.engine.embedding`).
"""
