"""Text tokenisation rate of an open_clip bundle: its clean steps + tokenizer.json, tokenizer.json
alone, and open_clip's SimpleTokenizer, on the same captions (best of 3 runs each).

    python benchmarks/bench_open_clip_tokenizer.py [--texts 20000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> None:
    import open_clip

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fixtures_ckpt import DEFAULT_WORDS

    from clipeval.engine.text.tokenizer import TextTokenizer
    from clipeval.export.openclip_tokenizer import convert_simple_tokenizer

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--texts", type=int, default=20000)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(DEFAULT_WORDS, size=int(rng.integers(6, 14)))).capitalize() + "."
             for _ in range(args.texts)]
    reference = open_clip.tokenizer.SimpleTokenizer()
    tok, info = convert_simple_tokenizer(reference)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        tok.save(str(path))
        cases = {
            "bundle tokenizer (clean steps + tokenizer.json)": TextTokenizer(path, {"pad_id": 0, **info.extra}, 77).encode,
            "tokenizer.json alone": TextTokenizer(path, {"pad_id": 0}, 77).encode,
            "open_clip SimpleTokenizer": reference,
        }
        for name, run in cases.items():
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                run(texts)
                best = min(best, time.perf_counter() - t0)
            print(f"{name}: {len(texts) / best:,.0f} texts/s")


if __name__ == "__main__":
    main()
