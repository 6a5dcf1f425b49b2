"""positive_ranks against a dense oracle: full score matrix + stable argsort."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipeval.engine.kernels import positive_ranks


def oracle_ranks(text_emb, image_emb, text_to_image):
    """Ranks by the definition, from the whole score matrix (one matmul) and a stable argsort.

    Scores are taken in float64 (from the float32 inputs), like the kernel's canonical scores, so
    near-ties are decided the same way; with exactly representable inputs every order agrees.
    """
    s = np.asarray(text_emb, np.float32).astype(np.float64) @ np.asarray(
        image_emb, np.float32
    ).astype(np.float64).T
    n_texts, n_images = s.shape
    order = np.argsort(-s, axis=1, kind="stable")
    t2i = np.array([np.flatnonzero(order[t] == text_to_image[t])[0] for t in range(n_texts)])
    order_cols = np.argsort(-s.T, axis=1, kind="stable")
    i2t = np.full(n_images, -1)
    for i in range(n_images):
        texts = np.flatnonzero(text_to_image == i)
        if texts.size:
            i2t[i] = min(np.flatnonzero(order_cols[i] == p)[0] for p in texts)
    return t2i, i2t


def normalised(rng, n, dim):
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def assert_ranks_equal(got, expected):
    t2i, i2t = got
    assert t2i.dtype == np.int64 and i2t.dtype == np.int64
    np.testing.assert_array_equal(t2i, expected[0])
    np.testing.assert_array_equal(i2t, expected[1])


SHAPES = [(1, 1, 1), (1, 6, 3), (6, 1, 4), (17, 9, 8), (40, 13, 32), (64, 64, 16), (203, 37, 64)]


@pytest.mark.parametrize("n_texts,n_images,dim", SHAPES)
def test_random_matches_oracle(n_texts, n_images, dim):
    rng = np.random.default_rng(n_texts * 1000 + n_images)
    text = normalised(rng, n_texts, dim)
    image = normalised(rng, n_images, dim)
    text_to_image = rng.integers(0, n_images, n_texts)
    expected = oracle_ranks(text, image, text_to_image)
    for block_rows in (1, 7, n_texts):
        for threads in (1, 2):
            got = positive_ranks(
                text, image, text_to_image, block_rows=block_rows, num_threads=threads
            )
            assert_ranks_equal(got, expected)


def test_correlated_pairs_match_oracle():
    # Texts close to their image, as with a trained model: most ranks are small.
    rng = np.random.default_rng(7)
    image = normalised(rng, 50, 32)
    text_to_image = np.repeat(np.arange(50), 5)
    text = image[text_to_image] + 0.1 * rng.standard_normal((250, 32)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    got = positive_ranks(text, image, text_to_image, block_rows=16, num_threads=2)
    assert_ranks_equal(got, oracle_ranks(text, image, text_to_image))
    assert (got[0] == 0).mean() > 0.5  # the data is what it claims to be


def test_all_ties_go_to_lower_index():
    # Identical embeddings of small integers: every score is exactly 4 in any summation order.
    text = np.ones((9, 4), np.float32)
    image = np.ones((5, 4), np.float32)
    text_to_image = np.array([0, 1, 2, 3, 4, 4, 3, 2, 1])
    for block_rows in (1, 7, 9):
        t2i, i2t = positive_ranks(text, image, text_to_image, block_rows=block_rows, num_threads=2)
        # All images tie: the rank is the number of lower image indices.
        np.testing.assert_array_equal(t2i, text_to_image)
        # All texts tie: the best positive is the lowest text index of the image.
        np.testing.assert_array_equal(i2t, [0, 1, 2, 3, 4])
    assert_ranks_equal((t2i, i2t), oracle_ranks(text, image, text_to_image))


def test_partial_ties_match_oracle():
    # Rows drawn from a few integer vectors (exact scores) with powers-of-two scales.
    rng = np.random.default_rng(3)
    pool = rng.integers(-2, 3, (4, 6)).astype(np.float32)
    text = pool[rng.integers(0, 4, 60)] * 2.0 ** rng.integers(-1, 2, (60, 1))
    image = pool[rng.integers(0, 4, 23)]
    text_to_image = rng.integers(0, 23, 60)
    expected = oracle_ranks(text, image, text_to_image)
    for block_rows in (1, 7, 60):
        for threads in (1, 2):
            got = positive_ranks(
                text, image, text_to_image, block_rows=block_rows, num_threads=threads
            )
            assert_ranks_equal(got, expected)


def test_near_ties_decided_by_exact_score_for_any_block_size():
    # Images that differ from one another by about one float32 ulp: the float32 GEMM may round
    # their scores either way depending on the blocking; the ranks must not move.
    rng = np.random.default_rng(11)
    base = normalised(rng, 8, 256)
    image = np.repeat(base, 16, axis=0)
    image += rng.choice([-1, 0, 1], size=image.shape).astype(np.float32) * np.spacing(image)
    text = np.repeat(base, 3, axis=0) + np.float32(1e-3) * normalised(rng, 24, 256)
    text_to_image = rng.integers(0, image.shape[0], text.shape[0])
    expected = oracle_ranks(text, image, text_to_image)
    for block_rows in (1, 2, 7, 24):
        for threads in (1, 2):
            got = positive_ranks(
                text, image, text_to_image, block_rows=block_rows, num_threads=threads
            )
            assert_ranks_equal(got, expected)


def test_several_texts_per_image_and_image_without_text():
    rng = np.random.default_rng(5)
    text = normalised(rng, 12, 8)
    image = normalised(rng, 5, 8)
    text_to_image = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 4, 4, 0])  # image 3 has no text
    t2i, i2t = positive_ranks(text, image, text_to_image, num_threads=2)
    assert i2t[3] == -1
    assert_ranks_equal((t2i, i2t), oracle_ranks(text, image, text_to_image))
    # The image -> text rank is the minimum over the image's own texts of their column rank.
    s = text.astype(np.float64) @ image.astype(np.float64).T
    for i in (0, 1, 2, 4):
        texts = np.flatnonzero(text_to_image == i)
        column_rank = [int((s[:, i] > s[p, i]).sum()) for p in texts]  # no ties in random data
        assert i2t[i] == min(column_rank)


def test_one_image_and_one_text():
    rng = np.random.default_rng(2)
    text = normalised(rng, 7, 4)
    image = normalised(rng, 1, 4)
    t2i, i2t = positive_ranks(text, image, np.zeros(7, np.int64))
    np.testing.assert_array_equal(t2i, np.zeros(7))  # the only image is always first
    assert i2t[0] == 0  # the best of its texts ranks first among texts
    assert_ranks_equal((t2i, i2t), oracle_ranks(text, image, np.zeros(7, np.int64)))
    t2i, i2t = positive_ranks(text[:1], normalised(rng, 6, 4), np.array([4]))
    assert i2t.tolist() == [-1, -1, -1, -1, 0, -1]
    assert 0 <= t2i[0] < 6


def test_float64_and_integer_index_dtypes_accepted():
    rng = np.random.default_rng(9)
    text = normalised(rng, 20, 8)
    image = normalised(rng, 6, 8)
    text_to_image = rng.integers(0, 6, 20).astype(np.int32)
    got = positive_ranks(text.astype(np.float64), image, text_to_image)
    assert_ranks_equal(got, oracle_ranks(text, image, text_to_image))


def test_memory_is_per_block_not_full_matrix():
    rng = np.random.default_rng(4)
    n_texts, n_images = 4000, 500
    text = normalised(rng, n_texts, 16)
    image = normalised(rng, n_images, 16)
    text_to_image = rng.integers(0, n_images, n_texts)
    positive_ranks(text, image, text_to_image, block_rows=64)  # compile outside the trace
    tracemalloc.start()
    try:
        positive_ranks(text, image, text_to_image, block_rows=64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full_matrix = n_texts * n_images * 4
    assert peak < full_matrix / 8


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"image_emb": np.ones((3, 5), np.float32)}, ValueError, "dimension"),
        ({"text_to_image": np.array([0, 3])}, ValueError, r"text_to_image\[1\] = 3"),
        ({"text_to_image": np.array([0, -1])}, ValueError, r"text_to_image\[1\] = -1"),
        ({"text_to_image": np.array([0])}, ValueError, "shape"),
        ({"text_to_image": np.array([0.0, 1.0])}, TypeError, "integers"),
        ({"text_emb": np.ones(4, np.float32)}, ValueError, "2-D"),
        ({"text_emb": np.array([[1, 0, 0, np.nan], [1, 0, 0, 0]])}, ValueError, "row 0"),
        ({"text_emb": np.array([["a"]])}, TypeError, "numeric"),
        ({"block_rows": 0}, ValueError, "block_rows"),
        ({"num_threads": 0}, ValueError, "num_threads"),
    ],
)
def test_invalid_input_is_reported(kwargs, error, match):
    args = {
        "text_emb": np.ones((2, 4), np.float32),
        "image_emb": np.ones((3, 4), np.float32),
        "text_to_image": np.array([0, 2]),
    }
    args.update(kwargs)
    block_rows = args.pop("block_rows", None)
    num_threads = args.pop("num_threads", None)
    with pytest.raises(error, match=match):
        positive_ranks(**args, block_rows=block_rows, num_threads=num_threads)


def test_more_threads_than_available_uses_available():
    rng = np.random.default_rng(6)
    text, image = normalised(rng, 10, 4), normalised(rng, 4, 4)
    text_to_image = rng.integers(0, 4, 10)
    got = positive_ranks(text, image, text_to_image, num_threads=10_000)
    assert_ranks_equal(got, oracle_ranks(text, image, text_to_image))


@settings(max_examples=40, deadline=None)
@given(
    n_texts=st.integers(1, 12),
    n_images=st.integers(1, 8),
    dim=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
    block_rows=st.integers(1, 13),
    threads=st.sampled_from([1, 2]),
)
def test_hypothesis_small_integer_embeddings(n_texts, n_images, dim, seed, block_rows, threads):
    # Small integers give many exact ties, where only the index rule decides.
    rng = np.random.default_rng(seed)
    text = rng.integers(-2, 3, (n_texts, dim)).astype(np.float32)
    image = rng.integers(-2, 3, (n_images, dim)).astype(np.float32)
    text_to_image = rng.integers(0, n_images, n_texts)
    got = positive_ranks(
        text, image, text_to_image, block_rows=block_rows, num_threads=threads
    )
    assert_ranks_equal(got, oracle_ranks(text, image, text_to_image))


# --- the numpy path for small inputs: the same ranks, bit for bit -------------------------------

from clipeval.engine.kernels import SMALL_PAIRS  # noqa: E402
from clipeval.engine.kernels.arrays import dot64_pairs  # noqa: E402
from clipeval.engine.kernels.rank import positive_ranks as ranks_numba  # noqa: E402
from clipeval.engine.kernels.rank_small import positive_ranks_small  # noqa: E402


def small_matches_numba_and_oracle(text, image, text_to_image):
    small = positive_ranks_small(text, image, text_to_image)
    assert_ranks_equal(small, oracle_ranks(text, image, text_to_image))
    assert_ranks_equal(small, ranks_numba(text, image, text_to_image, block_rows=7, num_threads=2))
    return small


@pytest.mark.parametrize("dim", [1, 2, 3, 4, 5, 7, 13, 64, 512])
def test_dot64_pairs_is_bit_identical_to_the_kernels_dot64(dim):
    from clipeval.engine.kernels.common import dot64

    rng = np.random.default_rng(dim)
    a = rng.standard_normal((20, dim)).astype(np.float32) * np.float32(3.7)
    b = rng.standard_normal((20, dim)).astype(np.float32)
    got = dot64_pairs(a, b)
    assert got.dtype == np.float64
    for r in range(20):
        assert got[r] == dot64(a[r], b[r])  # exact equality, not closeness


@pytest.mark.parametrize("n_texts,n_images,dim", SHAPES)
def test_small_path_random_matches(n_texts, n_images, dim):
    rng = np.random.default_rng(n_texts * 7 + n_images)
    text, image = normalised(rng, n_texts, dim), normalised(rng, n_images, dim)
    small_matches_numba_and_oracle(text, image, rng.integers(0, n_images, n_texts))


def test_small_path_ties_near_ties_and_images_without_text():
    ones = np.ones((9, 4), np.float32)
    t2i, i2t = small_matches_numba_and_oracle(ones, np.ones((5, 4), np.float32),
                                              np.array([0, 1, 2, 3, 4, 4, 3, 2, 1]))
    np.testing.assert_array_equal(i2t, [0, 1, 2, 3, 4])
    rng = np.random.default_rng(11)
    base = normalised(rng, 8, 256)
    image = np.repeat(base, 16, axis=0)
    image += rng.choice([-1, 0, 1], size=image.shape).astype(np.float32) * np.spacing(image)
    text = np.repeat(base, 3, axis=0) + np.float32(1e-3) * normalised(rng, 24, 256)
    small_matches_numba_and_oracle(text, image, rng.integers(0, image.shape[0], text.shape[0]))
    text, image = normalised(rng, 12, 8), normalised(rng, 5, 8)
    _, i2t = small_matches_numba_and_oracle(text, image, np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 4, 4, 0]))
    assert i2t[3] == -1


@settings(max_examples=60, deadline=None)
@given(n_texts=st.integers(1, 12), n_images=st.integers(1, 8), dim=st.integers(1, 6),
       seed=st.integers(0, 2**32 - 1))
def test_hypothesis_small_path_integer_embeddings(n_texts, n_images, dim, seed):
    rng = np.random.default_rng(seed)
    text = rng.integers(-2, 3, (n_texts, dim)).astype(np.float32)
    image = rng.integers(-2, 3, (n_images, dim)).astype(np.float32)
    small_matches_numba_and_oracle(text, image, rng.integers(0, n_images, n_texts))


def test_small_inputs_rank_without_importing_numba():
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from clipeval.engine.metrics.retrieval import evaluate_retrieval\n"
        "rng = np.random.default_rng(0)\n"
        "text, image = rng.standard_normal((50, 8)), rng.standard_normal((10, 8))\n"
        "evaluate_retrieval(text, image, np.repeat(np.arange(10), 5))\n"
        "print('numba' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"


def test_dispatch_by_size(monkeypatch):
    import clipeval.engine.kernels as kernels

    calls = []
    monkeypatch.setattr(kernels, "positive_ranks_small", lambda *a: calls.append("small") or ("s", "s"))
    rng = np.random.default_rng(1)
    text, image = normalised(rng, 6, 4), normalised(rng, 3, 4)
    assert kernels.positive_ranks(text, image, np.zeros(6, np.int64)) == ("s", "s")
    kernels.positive_ranks(text, image, np.zeros(6, np.int64), block_rows=2)  # asked for blocks: numba
    assert calls == ["small"]
    assert SMALL_PAIRS >= 1 << 20
    with pytest.raises(ValueError, match="num_threads"):
        kernels.positive_ranks(text, image, np.zeros(6, np.int64), num_threads=0)


@pytest.mark.parametrize("group_after, chunk", [(0, 5), (10**9, 5), (0, 1 << 22)])
def test_small_path_duplicated_rows_grouped_and_chunked(monkeypatch, group_after, chunk):
    from clipeval.engine.kernels import rank_small

    monkeypatch.setattr(rank_small, "GROUP_AFTER", group_after)  # 0: always group; 10**9: never
    monkeypatch.setattr(rank_small, "CHUNK_ELEMENTS", chunk)  # 5: one pair per chunk
    rng = np.random.default_rng(21)
    pool_t = rng.integers(-2, 3, (3, 6)).astype(np.float32)
    pool_i = rng.integers(-2, 3, (4, 6)).astype(np.float32)
    text = pool_t[rng.integers(0, 3, 70)]  # many bitwise-identical rows
    image = np.concatenate([pool_i[rng.integers(0, 4, 20)], rng.standard_normal((5, 6)).astype(np.float32)])
    text[::7] += np.float32(0.5)  # some rows differ, some of those by exact multiples
    small_matches_numba_and_oracle(text, image, rng.integers(0, image.shape[0], 70))


def test_identical_row_groups_compare_rows_not_just_hashes():
    from clipeval.engine.kernels.arrays import hash_multipliers, identical_row_groups
    from clipeval.engine.kernels.common import row_hashes

    rng = np.random.default_rng(4)
    pool = rng.standard_normal((3, 5)).astype(np.float32)
    x = pool[[0, 1, 0, 2, 1, 0]]
    x = np.concatenate([x, -np.zeros((1, 5), np.float32), np.zeros((1, 5), np.float32)])  # -0.0 vs 0.0
    hashes = row_hashes(x, hash_multipliers(5), 2)
    assert hashes[0] == hashes[2] == hashes[5] and hashes[1] == hashes[4]
    groups = identical_row_groups(x, hashes)
    np.testing.assert_array_equal(groups[:6], [0, 1, 0, 3, 1, 0])
    assert groups[6] != groups[7]  # different bits: not grouped (they are merely re-scored)
    # every hash colliding: still only bitwise-identical rows share a group
    collided = identical_row_groups(x, np.zeros(len(x), np.uint64))
    np.testing.assert_array_equal(collided, groups)
    distinct = normalised(rng, 9, 5)
    np.testing.assert_array_equal(identical_row_groups(distinct, row_hashes(distinct, hash_multipliers(5), 1)),
                                  np.arange(9))


@pytest.mark.parametrize("block_rows", [1, 5, 64])
def test_duplicated_texts_and_images_match_oracle(block_rows):
    rng = np.random.default_rng(12)
    text = normalised(rng, 4, 16)[rng.integers(0, 4, 60)]  # 60 texts, 4 distinct
    image = normalised(rng, 6, 16)[rng.integers(0, 6, 30)]  # 30 images, 6 distinct
    text_to_image = rng.integers(0, 30, 60)
    expected = oracle_ranks(text, image, text_to_image)
    for threads in (1, 2):
        assert_ranks_equal(ranks_numba(text, image, text_to_image, block_rows=block_rows, num_threads=threads),
                           expected)
    assert_ranks_equal(positive_ranks_small(text, image, text_to_image), expected)
