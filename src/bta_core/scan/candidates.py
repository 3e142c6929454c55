"""Candidate pairs and their model scores: exact blocks of all pairs, or FAISS neighbours.

Every query x query pair (``within``) and query x reference pair is scored with the model's
symmetric split-head ``score_matrix`` in blocks of bounded size; above ``faiss_above`` images
the candidates come from FAISS k-nearest-neighbours and only those are scored by the head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..model import BTAModel
from ..runtime import ProgressFn, StopFn, check_cancel
from ..scoring import block_scores, orientation_name, pair_scores  # noqa: F401 (re-exported)

DEFAULT_TOP_K = 50
DEFAULT_FAISS_ABOVE = 20_000
DEFAULT_FAISS_K = 32
DEFAULT_BLOCK_PAIRS = 1 << 22
DEFAULT_MAX_PAIRS = 1_000_000
IVF_ABOVE = 200_000


class PairCollector:
    """Keeps every pair at or above the threshold (up to ``max_pairs``) and the top K overall."""

    def __init__(self, threshold: float, top_k: int, max_pairs: int) -> None:
        self.threshold = threshold
        self.top_k = max(0, int(top_k))
        self.max_pairs = max(1, int(max_pairs))
        self.above: list[torch.Tensor] = []  # rows of (score, i, j, orient) as float64
        self.n_above = 0
        self.top = torch.empty(0, 4, dtype=torch.float64)
        self.truncated = False
        self.n_scored = 0

    @staticmethod
    def _best(rows: torch.Tensor, k: int) -> torch.Tensor:
        if rows.shape[0] <= k:
            return rows
        return rows[torch.topk(rows[:, 0], k).indices]

    def add(self, s: torch.Tensor, i: torch.Tensor, j: torch.Tensor, o: torch.Tensor) -> None:
        s = s.reshape(-1).double().cpu()
        self.n_scored += s.numel()
        if s.numel() == 0:
            return
        rows = torch.stack(
            [
                s,
                i.reshape(-1).double().cpu(),
                j.reshape(-1).double().cpu(),
                o.reshape(-1).double().cpu(),
            ],
            1,
        )
        if self.top_k:
            self.top = self._best(torch.cat([self.top, self._best(rows, self.top_k)]), self.top_k)
        keep = rows[rows[:, 0] >= self.threshold]
        if keep.shape[0]:
            self.above.append(keep)
            self.n_above += keep.shape[0]
            if self.n_above > 2 * self.max_pairs:
                self._shrink()

    def _shrink(self) -> None:
        merged = torch.cat(self.above)
        if merged.shape[0] > self.max_pairs:
            self.truncated = True
            merged = self._best(merged, self.max_pairs)
        self.above = [merged]
        self.n_above = merged.shape[0]

    def result(self, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Rows ``(score, i, j, code)`` kept, plus ``extra`` rows, unique and best first."""
        if self.above:
            self._shrink()
        rows = torch.cat(self.above + [self.top]) if self.above else self.top
        if extra is not None and len(extra):
            rows = torch.cat([rows, extra.double()])
        if rows.shape[0] == 0:
            return rows
        key = rows[:, 1].long() * (1 << 32) + rows[:, 2].long()
        _, first = np.unique(key.numpy(), return_index=True)
        rows = rows[torch.from_numpy(first)]
        # best first; ties broken by the item indices so the order is reproducible
        order = np.lexsort((rows[:, 2].numpy(), rows[:, 1].numpy(), -rows[:, 0].numpy()))
        return rows[torch.from_numpy(order)]


class PerImageBest:
    """The ``k`` best-scoring partners of every image: the pairs keypoint matching checks."""

    def __init__(self, n: int, k: int) -> None:
        self.n, self.k = n, max(0, int(k))
        self.score = torch.full((n, self.k), -math.inf, dtype=torch.float64)
        self.partner = torch.full((n, self.k), -1, dtype=torch.long)
        self.code = torch.full((n, self.k), -1, dtype=torch.long)

    def add(self, img: torch.Tensor, partner: torch.Tensor, s: torch.Tensor, code: torch.Tensor):
        """Offer pairs ``(img[m], partner[m])`` with scores ``s`` (each pair once per image)."""
        if not self.k or img.numel() == 0:
            return
        own = torch.arange(self.n).repeat_interleave(self.k)
        all_img = torch.cat([own, img.reshape(-1).long().cpu()])
        all_p = torch.cat([self.partner.reshape(-1), partner.reshape(-1).long().cpu()])
        all_s = torch.cat([self.score.reshape(-1), s.reshape(-1).double().cpu()])
        all_c = torch.cat([self.code.reshape(-1), code.reshape(-1).long().cpu()])
        order = torch.from_numpy(np.lexsort((-all_s.numpy(), all_img.numpy())))
        img_sorted = all_img[order]
        starts = torch.searchsorted(img_sorted, torch.arange(self.n))
        rank = torch.arange(len(order)) - starts[img_sorted]
        keep = rank < self.k
        rows, cols, sel = img_sorted[keep], rank[keep], order[keep]
        self.score[rows, cols] = all_s[sel]
        self.partner[rows, cols] = all_p[sel]
        self.code[rows, cols] = all_c[sel]

    def add_block(
        self, s: torch.Tensor, row_ids: torch.Tensor, col_ids: torch.Tensor, code: torch.Tensor
    ) -> None:
        """Offer a dense block ``s[r, c]`` of pairs (``-inf`` marks pairs that do not count)."""
        if not self.k or s.numel() == 0:
            return
        s, code = s.double().cpu(), code.long().cpu()
        k_r = min(self.k, s.shape[1])
        vals, idx = torch.topk(s, k_r, dim=1)
        img = row_ids[:, None].expand(-1, k_r)
        ok = torch.isfinite(vals)
        self.add(img[ok], col_ids[idx][ok], vals[ok], torch.gather(code, 1, idx)[ok])
        k_c = min(self.k, s.shape[0])
        vals, idx = torch.topk(s, k_c, dim=0)
        img = col_ids[None, :].expand(k_c, -1)
        ok = torch.isfinite(vals)
        self.add(img[ok], row_ids[idx][ok], vals[ok], torch.gather(code, 0, idx)[ok])

    def rows(self) -> torch.Tensor:
        """The kept pairs as rows ``(score, i, j, code)`` with ``i < j``."""
        ok = self.partner >= 0
        img = torch.arange(self.n)[:, None].expand(-1, self.k)[ok]
        other = self.partner[ok]
        i, j = torch.minimum(img, other), torch.maximum(img, other)
        return torch.stack([self.score[ok], i.double(), j.double(), self.code[ok].double()], 1)


def faiss_neighbours(
    queries: torch.Tensor, base: torch.Tensor, k: int, ivf_above: int = IVF_ABOVE
) -> np.ndarray:
    """Indices ``(nq, k)`` of the nearest rows of ``base`` by cosine (FAISS; IVF when large)."""
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "candidate search above the size limit needs FAISS: pip install faiss-cpu "
            "(or napari-bta[faiss]), or raise --faiss-above to score all pairs exactly"
        ) from exc
    xb = torch.nn.functional.normalize(base.float(), dim=1).numpy().astype(np.float32)
    xq = torch.nn.functional.normalize(queries.float(), dim=1).numpy().astype(np.float32)
    d = xb.shape[1]
    k = min(k, xb.shape[0])
    if xb.shape[0] > ivf_above:
        nlist = int(4 * math.sqrt(xb.shape[0]))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = xb[rng.choice(xb.shape[0], min(xb.shape[0], 64 * nlist), replace=False)]
        index.train(sample)
        index.nprobe = 16
    else:
        index = faiss.IndexFlatIP(d)
    index.add(xb)
    _, idx = index.search(xq, k)
    return idx


def _same_file_pairs(
    file_of: torch.Tensor, q_idx: torch.Tensor, r_idx: torch.Tensor, within: bool
) -> int:
    """How many of the pairs ``score_all`` would score join two planes of one file."""
    fq = torch.bincount(file_of[q_idx], minlength=len(file_of))
    fr = torch.bincount(file_of[r_idx], minlength=len(file_of))
    n = int((fq * fr).sum())
    return n + (int((fq * (fq - 1) // 2).sum()) if within else 0)


def _other_files(
    file_of: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate pairs ``(a[m], b[m])`` whose images come from different files."""
    if file_of is None:
        return a, b
    keep = file_of[a] != file_of[b]
    return a[keep], b[keep]


def score_all(
    model: BTAModel,
    z: torch.Tensor,
    roles: Sequence[str],
    *,
    threshold: float,
    top_k: int = DEFAULT_TOP_K,
    tta: str | None = None,
    within: bool = True,
    faiss_above: int = DEFAULT_FAISS_ABOVE,
    faiss_k: int = DEFAULT_FAISS_K,
    block_pairs: int = DEFAULT_BLOCK_PAIRS,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    per_image: int = 0,
    progress_bar: bool = False,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    files: Sequence[int] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Score query x query (``within``) and query x reference pairs of the embeddings ``z``;
    with ``files`` (``evidence.file_numbers``), no pair of two planes of one file.

    Returns rows ``(score, i, j, orientation_code)`` sorted best first (i, j index ``z``, with
    i < j inside the queries and i a query, j a reference across), and statistics. The rows
    hold every pair at or above ``threshold`` (up to ``max_pairs``), the ``top_k`` best and
    the ``per_image`` best pairs of every image.
    """
    device = model.device
    q_idx = torch.tensor([k for k, r in enumerate(roles) if r == "query"], dtype=torch.long)
    r_idx = torch.tensor([k for k, r in enumerate(roles) if r == "reference"], dtype=torch.long)
    nq, nr = len(q_idx), len(r_idx)
    n_total = (nq * (nq - 1) // 2 if within else 0) + nq * nr
    file_of = None if files is None else torch.as_tensor(list(files), dtype=torch.long)
    if file_of is not None:
        n_total -= _same_file_pairs(file_of, q_idx, r_idx, within)
    collector = PairCollector(threshold, top_k, max_pairs)
    best = PerImageBest(len(roles), per_image)
    use_faiss = len(roles) > faiss_above
    stats = {"method": "faiss" if use_faiss else "exact", "n_pairs_total": n_total}

    if nq == 0 or n_total == 0:
        stats["n_pairs_scored"] = 0
        return collector.result(), stats
    zq = z[q_idx]
    zr = z[r_idx]
    ident = (lambda t: t[:, 0]) if tta == "d4" else (lambda t: t)
    bar = None
    if use_faiss:
        cand = []
        if within and nq > 1:
            base = zq.reshape(-1, zq.shape[-1]) if tta == "d4" else zq
            nb = faiss_neighbours(ident(zq), base, faiss_k * (8 if tta == "d4" else 1) + 1)
            if tta == "d4":
                nb = np.where(nb >= 0, nb // 8, -1)
            ii = np.repeat(np.arange(nq), nb.shape[1])
            jj = nb.reshape(-1)
            ok = (jj >= 0) & (jj != ii)
            a, b = np.minimum(ii[ok], jj[ok]), np.maximum(ii[ok], jj[ok])
            pairs = np.unique(np.stack([a, b], 1), axis=0)
            cand.append(_other_files(file_of, q_idx[pairs[:, 0]], q_idx[pairs[:, 1]]))
        if nr:
            base = zr.reshape(-1, zr.shape[-1]) if tta == "d4" else zr
            nb = faiss_neighbours(ident(zq), base, faiss_k * (8 if tta == "d4" else 1))
            if tta == "d4":
                nb = np.where(nb >= 0, nb // 8, -1)
            ii = np.repeat(np.arange(nq), nb.shape[1])
            jj = nb.reshape(-1)
            ok = jj >= 0
            pairs = np.unique(np.stack([ii[ok], jj[ok]], 1), axis=0)
            cand.append(_other_files(file_of, q_idx[pairs[:, 0]], r_idx[pairs[:, 1]]))
        total = sum(len(a) for a, _ in cand)
        if progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="pair", unit_scale=True, desc="score", dynamic_ncols=True)
        step = max(1, block_pairs // 64)
        done = 0
        for ia, ib in cand:
            for s0 in range(0, len(ia), step):
                check_cancel(should_stop, "scan")
                a, b = ia[s0 : s0 + step], ib[s0 : s0 + step]
                s, o = pair_scores(model, z[a].to(device), z[b].to(device), tta)
                collector.add(s, a, b, o)
                best.add(torch.cat([a, b]), torch.cat([b, a]), s.repeat(2), o.repeat(2))
                done += len(a)
                if bar is not None:
                    bar.update(len(a))
                if on_progress is not None:
                    on_progress(done, total, {"stage": "score"})
    else:
        if progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=n_total, unit="pair", unit_scale=True, desc="score", dynamic_ncols=True
            )
        zq_d = zq.to(device)
        zr_d = zr.to(device) if nr else None
        cols = (nq if within else 0) + nr
        rows = max(1, block_pairs // max(cols, 1))
        done = 0
        for i0 in range(0, nq, rows):
            check_cancel(should_stop, "scan")
            i1 = min(nq, i0 + rows)
            if within and i0 + 1 < nq:
                s, o = block_scores(model, zq_d[i0:i1], zq_d[i0:], tta)
                a = torch.arange(i0, i1)[:, None].expand(-1, nq - i0)
                b = torch.arange(i0, nq)[None, :].expand(i1 - i0, -1)
                keep = b > a
                if file_of is not None:
                    keep &= file_of[q_idx[a]] != file_of[q_idx[b]]
                keep = keep.to(s.device)
                collector.add(s[keep], q_idx[a[keep.cpu()]], q_idx[b[keep.cpu()]], o[keep])
                masked = torch.where(keep, s.double(), torch.full_like(s, -math.inf).double())
                best.add_block(masked, q_idx[i0:i1], q_idx[i0:], o)
                done += int(keep.sum())
            if nr:
                s, o = block_scores(model, zq_d[i0:i1], zr_d, tta)
                a = torch.arange(i0, i1)[:, None].expand(-1, nr)
                b = torch.arange(nr)[None, :].expand(i1 - i0, -1)
                if file_of is None:
                    collector.add(s, q_idx[a], r_idx[b], o)
                    best.add_block(s, q_idx[i0:i1], r_idx, o)
                    done += s.numel()
                else:  # a file both scanned and a reference: not paired with itself
                    keep = (file_of[q_idx[a]] != file_of[r_idx[b]]).to(s.device)
                    collector.add(s[keep], q_idx[a[keep.cpu()]], r_idx[b[keep.cpu()]], o[keep])
                    masked = torch.where(keep, s.double(), torch.full_like(s, -math.inf).double())
                    best.add_block(masked, q_idx[i0:i1], r_idx, o)
                    done += int(keep.sum())
            if bar is not None:
                bar.update(done - bar.n)
            if on_progress is not None:
                on_progress(done, n_total, {"stage": "score"})
    if bar is not None:
        bar.close()
    stats["n_pairs_scored"] = collector.n_scored
    stats["truncated"] = collector.truncated
    return collector.result(extra=best.rows()), stats
