"""Results: :mod:`.layout` (where a result goes, its skip key and its ``meta`` block, written
atomically), :mod:`.read` (reading results back), :mod:`.detail` (per-query detail files),
:mod:`.trec` (TREC run files), :mod:`.compare` and :mod:`.report` (comparing and showing them)."""
