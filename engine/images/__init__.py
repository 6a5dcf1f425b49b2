"""Images: from a source (path, bytes, shard member) to model input.

:mod:`.load` opens and checks one image (header probe, decode, RGB); :mod:`.preprocess` turns it
into ``pixel_values`` as the bundle's ``preprocess.json`` says; :mod:`.pipeline` runs both over a
gallery in parallel decode workers (threads, or :mod:`.decode_procs` processes) and hands out
batches.
"""
