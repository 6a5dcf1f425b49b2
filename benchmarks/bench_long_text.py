"""One very long query line through the demo bundle's tokenizer: clipeval's TextTokenizer (which
cuts the text before tokenising) against `tokenizers` on the whole text with truncation (what it
did before), each in a child process of its own, side by side in one run.

    python benchmarks/bench_long_text.py [--mb 30]

Prints wall time and peak RSS above the text itself for both, their ratios, and whether the ids
are equal.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
from clipeval.engine.demo import DEMO_MODEL_DIR
mb, which = float(sys.argv[1]), sys.argv[2]
words = "a small large red blue green triangle square circle star at the top left right bottom centre".split()
text = " ".join(np.random.default_rng(0).choice(words, size=int(mb * 200_000)))[: int(mb * 1_000_000)]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if which == "uncut":
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(DEMO_MODEL_DIR / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(json.load(open(DEMO_MODEL_DIR / "manifest.json"))["context_length"])
    ids = tok.encode_batch([text])[0].ids
else:
    from clipeval.engine.sessions.bundle import load_bundle
    from clipeval.engine.text.tokenizer import TextTokenizer
    b = load_bundle(DEMO_MODEL_DIR)
    ids = TextTokenizer(DEMO_MODEL_DIR / "tokenizer.json", b.tokenizer_rule, b.context_length).encode([text]).ids[0].tolist()
wall = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"wall_s": wall, "extra_mb": (peak - base) / 1024, "ids": ids}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=30.0, help="length of the line in millions of characters")
    args = ap.parse_args()
    rows = {}
    for which in ("cut", "uncut"):
        run = subprocess.run([sys.executable, "-c", CHILD, str(args.mb), which], capture_output=True, text=True,
                             check=True)
        rows[which] = json.loads(run.stdout)
        print(f"{which:>6}: {rows[which]['wall_s']:8.2f} s, {rows[which]['extra_mb']:8.0f} MB above the text",
              file=sys.stderr)
    cut, uncut = rows["cut"], rows["uncut"]
    print(json.dumps({"mb": args.mb, "cut": {k: cut[k] for k in ("wall_s", "extra_mb")},
                      "uncut": {k: uncut[k] for k in ("wall_s", "extra_mb")},
                      "time_ratio": uncut["wall_s"] / cut["wall_s"],
                      "same_ids": cut["ids"] == uncut["ids"]}))


if __name__ == "__main__":
    main()
