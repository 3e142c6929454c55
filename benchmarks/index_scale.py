"""The reference index's search at scale: build time, memory, query latency, recall vs exact.

Embeddings are **synthetic** (no archive of a million real images is at hand): ``--n`` unit
vectors of the bundled model's dimension (1024) drawn as a mixture of ``--clusters`` Gaussian
clusters (look-alike images of one experiment sit close together, as real embeddings do).
Queries are copies of random stored vectors with noise added (cosine ~0.9 to their source, like
a re-encoded, cropped figure): the stored source is the "true neighbour".

Measured on ``bta_core.index.ann`` (what ``bta-core index`` uses above ``FLAT_MAX`` images):
IVF-SQ8 training + adding (build time), the serialized size (memory per image), the search
time per query at several ``nprobe``, recall@1 / recall@10 against exact inner-product search
(computed in blocks from the memory-mapped vectors), and whether the true source is in the top
10. Prints a table and one JSON object (``--out`` to save it):

    python benchmarks/index_scale.py --n 1000000 --threads 2 --out benchmarks/index_scale_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    """Resident memory of this process now (MB)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_data(path: Path, n: int, dim: int, clusters: int, seed: int, chunk: int = 50_000):
    """Unit vectors from a Gaussian mixture, written to a memory-mapped .npy file."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        x = centres[rng.integers(0, clusters, m)]
        x = x + 0.04 * rng.standard_normal((m, dim), dtype=np.float32)  # ~cos 0.6 within a cluster
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    return np.load(path, mmap_mode="r")


def exact_topk(xb: np.ndarray, xq: np.ndarray, k: int, chunk: int = 100_000):
    """Exact inner-product top-k by blocks (what IndexFlatIP computes), and its time."""
    t0 = time.perf_counter()
    best_s = np.full((len(xq), k), -np.inf, np.float32)
    best_i = np.full((len(xq), k), -1, np.int64)
    for s in range(0, len(xb), chunk):
        sims = xq @ np.asarray(xb[s : s + chunk]).T
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(sims, idx, 1)], axis=1)
        cand_i = np.concatenate([best_i, idx + s], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    return best_s, best_i, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1024, help="1024 = the bundled model")
    parser.add_argument("--clusters", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="where the vectors go")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import faiss

    from bta_core.index import ann

    faiss.omp_set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bta-index-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    xb = make_data(work / "xb.npy", args.n, args.dim, args.clusters, args.seed)
    t_gen = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed + 1)
    src = np.sort(rng.choice(args.n, args.queries, replace=False))
    xq = np.asarray(xb[src]) + 0.022 * rng.standard_normal((args.queries, args.dim)).astype(
        np.float32
    )
    xq = ann.normalise(xq)
    cos_src = float(np.mean(np.sum(xq * np.asarray(xb[src]), axis=1)))

    del xb
    xb = np.load(work / "xb.npy", mmap_mode="r")
    rss0 = rss_mb()
    t0 = time.perf_counter()
    index = ann.new_ivf(xb, args.n, seed=args.seed)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s in range(0, args.n, 100_000):
        ids = np.arange(s, min(args.n, s + 100_000))
        ann.add(index, np.asarray(xb[s : s + 100_000]), ids)
    t_add = time.perf_counter() - t0
    ipath = work / "ivf.faiss"
    faiss.write_index(index, str(ipath))
    size = ipath.stat().st_size

    gt_s, gt_i, t_exact = exact_topk(xb, xq, 10)
    res = []
    for nprobe in args.nprobe:
        index.nprobe = nprobe
        t0 = time.perf_counter()
        _, ids = ann.search(index, xq, 10)
        t_batch = time.perf_counter() - t0
        t0 = time.perf_counter()
        for q in xq[:100]:
            ann.search(index, q[None], 10)
        t_single = (time.perf_counter() - t0) / 100
        r1 = float(np.mean(ids[:, 0] == gt_i[:, 0]))
        r10 = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, gt_i, strict=True)]))
        src_in = float(np.mean([s in row for s, row in zip(src, ids, strict=True)]))
        res.append(
            {
                "nprobe": nprobe,
                "ms_per_query_batched": round(1000 * t_batch / args.queries, 3),
                "ms_per_query_single": round(1000 * t_single, 3),
                "recall_at_1_vs_exact": round(r1, 4),
                "recall_at_10_vs_exact": round(r10, 4),
                "true_source_in_top10": round(src_in, 4),
            }
        )
    out = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "faiss": faiss.__version__,
        "threads": args.threads,
        "data": "synthetic Gaussian-mixture unit vectors",
        "n": args.n,
        "dim": args.dim,
        "clusters": args.clusters,
        "queries": args.queries,
        "query_cos_to_source": round(cos_src, 3),
        "exact_source_in_top10": float(
            np.mean([s in row for s, row in zip(src, gt_i, strict=True)])
        ),
        "index": f"IVF{index.nlist},SQ8 (bta_core.index.ann.new_ivf)",
        "seconds_generate": round(t_gen, 1),
        "seconds_train": round(t_train, 1),
        "seconds_add": round(t_add, 1),
        "index_bytes": size,
        "index_bytes_per_image": round(size / args.n, 1),
        "flat_bytes_per_image": 4 * args.dim,
        "rss_growth_mb": round(rss_mb() - rss0, 1),
        "exact_ms_per_query_batched": round(1000 * t_exact / args.queries, 3),
        "search": res,
    }
    print(
        f"{args.n:,} x {args.dim} synthetic embeddings, {out['index']}, {args.threads} threads: "
        f"train {t_train:.1f} s, add {t_add:.1f} s, {size / args.n:.0f} B/image "
        f"(flat {4 * args.dim} B), exact search {out['exact_ms_per_query_batched']:.2f} ms/query"
    )
    print(f"{'nprobe':>7}{'ms/q batch':>12}{'ms/q single':>13}{'R@1':>7}{'R@10':>7}{'src@10':>8}")
    for r in res:
        print(
            f"{r['nprobe']:>7}{r['ms_per_query_batched']:>12.3f}{r['ms_per_query_single']:>13.3f}"
            f"{r['recall_at_1_vs_exact']:>7.3f}{r['recall_at_10_vs_exact']:>7.3f}"
            f"{r['true_source_in_top10']:>8.3f}"
        )
    print(json.dumps(out))
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    if args.workdir is None:
        for f in work.iterdir():
            f.unlink()
        work.rmdir()


if __name__ == "__main__":
    main()
