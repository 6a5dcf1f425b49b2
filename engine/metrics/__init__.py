"""Metrics from ranks and scores: :mod:`.retrieval` (recall@k and ranks, CLIP_benchmark's
definitions), :mod:`.classification` (top-k accuracy, mean per-class recall, mean average
precision) and :mod:`.ir` (nDCG, MAP, recall, precision, MRR, hit rate: trec_eval's)."""
