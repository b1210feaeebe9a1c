"""The math of selection: plain torch, no framework types, usable and testable alone.

Scores follow one convention: higher = more informative (selected first).
"""

from __future__ import annotations

from collections import deque

import torch


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} has {bad} NaN/inf values; the model diverged (lower train.lr or check the data)")
    return x


def _check_probs(probs: torch.Tensor) -> torch.Tensor:
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {tuple(probs.shape)}")
    return check_finite(probs, "probs")


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Predictive entropy -sum_c p_c log p_c, in nats."""
    probs = _check_probs(probs)
    return -torch.special.xlogy(probs, probs).sum(dim=1)


def margin(probs: torch.Tensor) -> torch.Tensor:
    """1 - (p_top1 - p_top2): high when the two most likely classes are close."""
    probs = _check_probs(probs)
    if probs.shape[1] < 2:
        return torch.ones(probs.shape[0], dtype=probs.dtype)
    top2 = probs.topk(2, dim=1).values
    return 1.0 - (top2[:, 0] - top2[:, 1])


def least_confidence(probs: torch.Tensor) -> torch.Tensor:
    """1 - max_c p_c."""
    probs = _check_probs(probs)
    return 1.0 - probs.max(dim=1).values


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Positions of the ``k`` highest scores; ties go to the lowest position (deterministic)."""
    scores = check_finite(scores, "scores")
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[: min(k, len(scores))]


def _check_stack(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim != 3:
        raise ValueError(f"{name} must be [K, N, C], got shape {tuple(x.shape)}")
    return check_finite(x, name)


def bald(mc_probs: torch.Tensor) -> torch.Tensor:
    """Mutual information between the label and the weights (Houlsby et al. 2011), in nats:
    H(mean_t p_t) - mean_t H(p_t) over T stochastic passes ``mc_probs[t]`` ([T, N, C]).

    Accumulated over t, so besides the input it holds O(N*C) (use :class:`BALDStream` when the T
    passes are produced one at a time and should not be kept). Identical passes (dropout p = 0)
    score 0, not NaN.
    """
    if mc_probs.ndim != 3:
        raise ValueError(f"mc_probs must be [T, N, C], got shape {tuple(mc_probs.shape)}")
    stream = BALDStream()
    for p in mc_probs:
        stream.update(p)
    return stream.score()


class BALDStream:
    """BALD accumulated one pass at a time: running sum of p and of H(p), O(N*C) memory."""

    def __init__(self) -> None:
        self.sum_probs: torch.Tensor | None = None
        self.sum_entropy: torch.Tensor | None = None
        self.passes = 0

    def update(self, probs: torch.Tensor) -> None:
        if probs.ndim != 2:
            raise ValueError(f"probs must be [N, C], got shape {tuple(probs.shape)}")
        p = probs.float()
        h = torch.special.entr(p).sum(dim=1)  # -sum_c p log p
        if self.sum_probs is None:  # float64 sums of float32 passes: T identical passes average back exactly
            self.sum_probs, self.sum_entropy = p.double(), h.double()
        else:
            self.sum_probs.add_(p)
            self.sum_entropy.add_(h)
        self.passes += 1

    def score(self) -> torch.Tensor:
        if self.passes == 0:
            raise ValueError("BALD needs at least one stochastic pass")
        mean = (self.sum_probs / self.passes).float()  # the same float32 ops as each pass's entropy
        mi = (torch.special.entr(mean).sum(dim=1).double() - self.sum_entropy / self.passes).float()
        # a NaN/inf anywhere in the passes reaches the score: one check at the end instead of one per pass
        return check_finite(mi, "mc_probs").clamp_min_(0)  # >= 0 exactly; rounding can leave -1e-7


def consistency(aug_probs: torch.Tensor) -> torch.Tensor:
    """Inconsistency under augmentation (Gao et al. 2020): sum over classes of the variance over
    the K views (population variance, divisor K) of p_c(view_k(x)); ``aug_probs`` is [K, N, C]."""
    aug_probs = _check_stack(aug_probs, "aug_probs")
    return (aug_probs - aug_probs.mean(dim=0)).pow(2).mean(dim=0).sum(dim=1)


def output_discrepancy(probs_a: torch.Tensor, probs_b: torch.Tensor) -> torch.Tensor:
    """Output discrepancy (Huang et al. 2021): 1/2 ||p_a - p_b||^2 per sample."""
    probs_a, probs_b = _check_probs(probs_a), _check_probs(probs_b)
    if probs_a.shape != probs_b.shape:
        raise ValueError(f"output_discrepancy needs equal shapes, got {tuple(probs_a.shape)} "
                         f"and {tuple(probs_b.shape)}")
    return 0.5 * (probs_a - probs_b).pow(2).sum(dim=1)


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=1)


def cal(cand_features: torch.Tensor, cand_probs: torch.Tensor, lab_features: torch.Tensor,
        lab_probs: torch.Tensor, k: int = 10, chunk: int = 4096) -> torch.Tensor:
    """Contrastive active learning (Margatina et al. 2021): for each candidate, the mean over its
    ``k`` nearest labeled samples (cosine similarity of the features) of KL(p_l || p_candidate).
    High when the model predicts differently for a sample than for labeled samples that look
    alike. Candidates are processed in chunks (never the whole N x L similarity matrix)."""
    check_finite(cand_features, "cand_features"), check_finite(lab_features, "lab_features")
    cand_probs, lab_probs = _check_probs(cand_probs), _check_probs(lab_probs)
    if len(lab_features) == 0:
        raise ValueError("cal needs at least one labeled sample")
    k = min(k, len(lab_features))
    lab = _normalize(lab_features)
    log_lab = torch.log(lab_probs.clamp_min(1e-12))
    lab_neg_entropy = (lab_probs * log_lab).sum(dim=1)  # sum_c p_l log p_l
    out = []
    for start in range(0, len(cand_features), chunk):
        sim = _normalize(cand_features[start:start + chunk]) @ lab.T
        nn_idx = sim.topk(k, dim=1).indices  # [n, k]
        log_cand = torch.log(cand_probs[start:start + chunk].clamp_min(1e-12))  # [n, C]
        # KL(p_l || p_c) = sum_c p_l log p_l - sum_c p_l log p_c, for each (candidate, neighbour)
        cross = torch.einsum("nkc,nc->nk", lab_probs[nn_idx], log_cand)
        out.append((lab_neg_entropy[nn_idx] - cross).mean(dim=1))
    return torch.cat(out) if out else cand_probs.new_zeros(0)


def class_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Unit-norm mean of the unit-norm features of each class ([C, D]; a class with no sample is a zero row)."""
    z = _normalize(check_finite(features, "features"))
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    sums = torch.zeros(num_classes, z.shape[1], dtype=z.dtype).index_add_(0, labels.long(), z)
    return torch.nn.functional.normalize(sums, dim=1)


def feature_similarity(cand_features: torch.Tensor, lab_features: torch.Tensor,
                       lab_labels: torch.Tensor) -> torch.Tensor:
    """Contrastive-feature novelty (Krishnan et al. 2021): minus the highest cosine similarity of a
    candidate to any labeled class prototype; high for samples unlike every labeled class."""
    if len(lab_features) == 0:
        raise ValueError("feature_similarity needs at least one labeled sample")
    protos = class_prototypes(lab_features, lab_labels)
    protos = protos[protos.norm(dim=1) > 0]
    return -(_normalize(check_finite(cand_features, "cand_features")) @ protos.T).max(dim=1).values


def kcenter_greedy(features: torch.Tensor, labeled: torch.Tensor, budget: int,
                   chunk: int | None = None) -> torch.Tensor:
    """Euclidean k-center greedy (Sener & Savarese 2018): repeatedly take the unlabeled point
    farthest from the labeled points and those already taken; with no labeled point, start from
    the point farthest from the mean. Ties go to the lowest index.

    Memory: a running vector of squared distances to the nearest center (N), the labeled set is
    folded in chunks of ``chunk`` columns (an N x chunk block, by default at most half the size
    of the feature matrix), each pick costs one matrix-vector product. Squared distances from
    ||x||^2 + ||c||^2 - 2<x, c> are clamped at 0 (no square root is needed to rank them).
    """
    x = check_finite(features, "features")
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {tuple(x.shape)}")
    if not x.is_floating_point() or x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    labeled = torch.as_tensor(labeled, dtype=torch.bool, device=x.device)
    n, d = x.shape
    if labeled.shape != (n,):
        raise ValueError(f"labeled must be a bool mask of length {n}, got shape {tuple(labeled.shape)}")
    budget = min(int(budget), int((~labeled).sum()))
    picks = torch.empty(max(budget, 0), dtype=torch.long, device=x.device)
    if budget <= 0:
        return picks
    sq = (x * x).sum(dim=1)
    min_d = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
    lab_idx = labeled.nonzero().squeeze(1)
    chunk = chunk or max(1, d // 2)
    for cols in lab_idx.split(chunk) if len(lab_idx) else ():
        block = torch.addmm(sq[cols].unsqueeze(0), x, x[cols].T, alpha=-2.0)  # ||c||^2 - 2<x, c>
        block += sq.unsqueeze(1)
        torch.minimum(min_d, block.clamp_min_(0).min(dim=1).values, out=min_d)
        del block
    min_d[labeled] = -1.0  # never picked
    start = 0
    if len(lab_idx) == 0:
        mean = x.mean(dim=0)
        dist = (sq - 2.0 * (x @ mean)).masked_fill_(labeled, -float("inf"))  # + ||mean||^2, same for all
        i = int(torch.argmax(dist))
        picks[0] = i
        _fold_center(min_d, x, sq, i)
        start = 1
    for j in range(start, budget):
        i = int(torch.argmax(min_d))  # the first maximum: ties go to the lowest index
        picks[j] = i
        _fold_center(min_d, x, sq, i)
    return picks


def _fold_center(min_d: torch.Tensor, x: torch.Tensor, sq: torch.Tensor, i: int) -> None:
    """min_d <- min(min_d, ||x - x_i||^2), and x_i is never picked again."""
    dist = torch.mv(x, x[i]).mul_(-2.0).add_(sq).add_(sq[i]).clamp_min_(0)
    torch.minimum(min_d, dist, out=min_d)
    min_d[i] = -1.0


def _gradient_factors(probs: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = _check_probs(probs).float()
    h = check_finite(features, "features").float()
    if h.ndim != 2 or len(h) != len(probs):
        raise ValueError(f"features must be [N, D] with N = {len(probs)}, got shape {tuple(h.shape)}")
    a = probs.clone()
    a[torch.arange(len(a)), probs.argmax(dim=1)] -= 1.0  # dCE/dlogits at the predicted label
    return a, h


def gradient_embedding_sq_dist(probs: torch.Tensor, features: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Squared distance of each sample's gradient embedding g = (p - onehot(argmax p)) (x) h to the
    nearest of ``centers`` (indices), using <a (x) h, a' (x) h'> = <a, a'><h, h'>: never builds the
    N x (C*D) embeddings. These are BADGE's D^2 sampling weights (up to normalisation)."""
    a, h = _gradient_factors(probs, features)
    norm2 = (a * a).sum(dim=1) * (h * h).sum(dim=1)
    out = torch.full_like(norm2, float("inf"))
    for i in torch.as_tensor(centers, dtype=torch.long).tolist():
        out = torch.minimum(out, _gradient_sq_dist_to(a, h, norm2, i))
    return out


def _gradient_sq_dist_to(a: torch.Tensor, h: torch.Tensor, norm2: torch.Tensor, i: int) -> torch.Tensor:
    dot = torch.mv(a, a[i]).mul_(torch.mv(h, h[i]))
    return dot.mul_(-2.0).add_(norm2).add_(norm2[i]).clamp_min_(0)


def badge(probs: torch.Tensor, features: torch.Tensor, budget: int,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """BADGE (Ash et al. 2020): k-means++ seeding on the gradient embeddings
    g = (p - onehot(argmax p)) (x) h. The first center is the largest ||g|| (lowest index on
    ties); each next one is drawn with probability proportional to its squared distance to the
    nearest center (D^2 sampling). Distances come from the factors (:func:`gradient_embedding_sq_dist`),
    so memory is O(N (C + D)), never the N x (C*D) matrix; each pick costs two matrix-vector products.
    When every remaining distance is 0 (duplicates), the lowest-index remaining samples are taken."""
    a, h = _gradient_factors(probs, features)
    n = len(a)
    budget = min(int(budget), n)
    picks = torch.empty(max(budget, 0), dtype=torch.long)
    if budget <= 0:
        return picks
    norm2 = (a * a).sum(dim=1) * (h * h).sum(dim=1)
    taken = torch.zeros(n, dtype=torch.bool)
    min_d = torch.full_like(norm2, float("inf"))
    i = int(torch.argmax(norm2))
    for j in range(budget):
        if j > 0:
            weights = min_d.masked_fill(taken, 0.0).double()
            total = float(weights.sum())
            if total > 0 and torch.isfinite(torch.tensor(total)):
                i = int(torch.multinomial(weights / total, 1, generator=generator))
            else:
                i = int((~taken).nonzero()[0])
        picks[j] = i
        taken[i] = True
        min_d = torch.minimum(min_d, _gradient_sq_dist_to(a, h, norm2, i))
    return picks


def batchbald(mc_probs: torch.Tensor, budget: int, num_samples: int = 1000,
              generator: torch.Generator | None = None, chunk: int = 256) -> torch.Tensor:
    """BatchBALD (Kirsch et al. 2019): greedily add the sample that most increases the mutual
    information between the labels of the whole batch and the weights,
    I(y_1..n; w) = H(y_1..n) - sum_i E_w H(y_i | w), over T stochastic passes ``mc_probs`` [T, N, C].

    The joint entropy H(y_1..n) is exact while the batch's label configurations number at most
    ``num_samples`` (C^n of them); beyond that ``num_samples`` configurations are drawn from the
    model's joint predictive (ancestral sampling, one label per new batch member) and the entropy
    is importance-estimated from them (each configuration's per-pass probabilities are rescaled,
    which shifts every candidate's score by the same constant). Cost per pick:
    O(num_samples * T * N * C); memory O(num_samples * chunk * C) besides the input.
    Returns positions into N in the order picked; ties to the lowest position.
    """
    if mc_probs.ndim != 3:
        raise ValueError(f"mc_probs must be [T, N, C], got shape {tuple(mc_probs.shape)}")
    p = check_finite(mc_probs, "mc_probs").double().permute(1, 0, 2).contiguous()  # [N, T, C]
    n, t, c = p.shape
    budget = min(int(budget), n)
    picks = torch.empty(max(budget, 0), dtype=torch.long)
    if budget <= 0:
        return picks
    cond = torch.special.entr(p).sum(dim=2).mean(dim=1)  # E_w H(y_i | w), [N]
    configs = torch.ones(1, t, dtype=torch.float64)  # [S, T]: P_t(configuration s) (or rescaled)
    exact = True
    taken = torch.zeros(n, dtype=torch.bool)
    for j in range(budget):
        joint = torch.empty(n, dtype=torch.float64)
        for start in range(0, n, chunk):
            pc = p[start:start + chunk]  # [b, T, C]
            q = torch.einsum("st,btc->bsc", configs, pc) / t  # P(config s, y = c) for each candidate
            if exact:
                joint[start:start + chunk] = torch.special.entr(q).sum(dim=(1, 2))
            else:  # configurations drawn from P(s): H ~ -1/S sum_s sum_c P(s, c) / P(s) log P(s, c)
                ps = configs.mean(dim=1)  # [S]
                joint[start:start + chunk] = (torch.special.entr(q) / ps[None, :, None]).sum(dim=(1, 2)) / len(ps)
        score = (joint - cond).masked_fill(taken, -float("inf"))
        i = int(torch.argmax(score))
        picks[j] = i
        taken[i] = True
        if j == budget - 1:
            break
        new = configs[:, None, :] * p[i].T[None, :, :]  # [S, C, T]: extend every configuration by y_i = c
        if exact and configs.shape[0] * c <= num_samples:
            configs = new.reshape(-1, t)
            continue
        # ancestral sampling: a configuration s (by its probability when exact, else each sample once),
        # then y_i ~ P(y_i = c | s)
        weights = new.mean(dim=2)  # [S, C]: P(s, y_i = c)
        if exact:
            rows = torch.multinomial(weights.sum(dim=1), num_samples, replacement=True, generator=generator)
        else:
            rows = torch.arange(configs.shape[0])
        cols = torch.multinomial(weights[rows], 1, generator=generator).squeeze(1)
        configs = new[rows, cols]
        configs = configs / configs.max(dim=1, keepdim=True).values.clamp_min(1e-300)  # no underflow
        exact = False
    return picks


def typicality(features: torch.Tensor, k: int = 20, chunk: int = 2048) -> torch.Tensor:
    """Typicality (Hacohen et al. 2022): 1 / (mean squared Euclidean distance to the ``k`` nearest other
    points + 1e-5), the form of the paper's code; with ``k`` = 0 every point is equally typical."""
    x = features.float()
    k = min(k, len(x) - 1)
    if k <= 0:
        return torch.ones(len(x))
    out = []
    for start in range(0, len(x), chunk):
        d = torch.cdist(x[start:start + chunk], x).pow_(2)
        d[torch.arange(len(d)), torch.arange(start, start + len(d))] = float("inf")  # not itself
        out.append(1.0 / (d.topk(k, dim=1, largest=False).values.mean(dim=1) + 1e-5))
    return torch.cat(out)


def typiclust(features: torch.Tensor, labeled: torch.Tensor, budget: int,
              generator: torch.Generator | None = None, k: int = 20, min_cluster_size: int = 5,
              max_clusters: int = 500) -> torch.Tensor:
    """TypiClust (Hacohen et al. 2022), for low budgets and the cold start, as the paper's code does it:
    the features are L2-normalised; k-means (mini-batch k-means past 50 clusters) into
    #labeled + budget clusters (at most ``max_clusters``); clusters of at most ``min_cluster_size``
    points are dropped; the rest are ordered by fewest labeled points, then largest, and visited in
    turn, each visit taking the most typical of the cluster's unlabeled points (typicality among
    them, with k = min(``k``, half of them)). A cluster without unlabeled points leaves the turn; the
    dropped clusters are used only when no other has any left."""

    from sklearn.cluster import KMeans, MiniBatchKMeans  # heavy (scikit-learn), and only TypiClust needs it

    x = _normalize(check_finite(features, "features"))
    labeled = torch.as_tensor(labeled, dtype=torch.bool)
    budget = min(int(budget), int((~labeled).sum()))
    if budget <= 0:
        return torch.empty(0, dtype=torch.long)
    n_clusters = max(1, min(int(labeled.sum()) + budget, max_clusters, len(x)))
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    km = (KMeans(n_clusters=n_clusters, n_init=1, random_state=seed) if n_clusters <= 50 else
          MiniBatchKMeans(n_clusters=n_clusters, batch_size=5000, n_init=1, random_state=seed))
    assign = torch.as_tensor(km.fit_predict(x.numpy()), dtype=torch.long)
    sizes = torch.bincount(assign, minlength=n_clusters)
    covered = torch.bincount(assign[labeled], minlength=n_clusters)
    ids = torch.arange(n_clusters)
    order = sorted(ids[sizes > 0].tolist(), key=lambda c: (int(covered[c]), -int(sizes[c]), c))
    turn = deque(c for c in order if sizes[c] > min_cluster_size)
    dropped = deque(c for c in order if sizes[c] <= min_cluster_size)
    free = ~labeled.clone()
    picks: list[int] = []
    while len(picks) < budget:
        if not turn:
            turn, dropped = dropped, deque()
        cl = turn.popleft()
        members = (free & (assign == cl)).nonzero().squeeze(1)
        if len(members) == 0:
            continue
        i = int(members[torch.argmax(typicality(x[members], min(k, len(members) // 2)))])
        picks.append(i)
        free[i] = False
        if len(members) > 1:
            turn.append(cl)
    return torch.tensor(picks, dtype=torch.long)


def egl(probs: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Expected gradient length of the last layer (Settles et al. 2008; Huang et al. 2016):
    sum_c p_c ||grad_W CE(x, c)|| over the head's weights W, the expectation taken under the model's
    own prediction. grad_W CE(x, c) = (p - e_c) (x) h, whose norm is ||p - e_c|| ||h||, and
    ||p - e_c||^2 = ||p||^2 - 2 p_c + 1: O(N (C + D)) with no per-sample backward pass."""
    if probs.ndim != 2:
        raise ValueError(f"probs must be [N, C], got shape {tuple(probs.shape)}")
    p = probs.float()
    if features.ndim != 2 or len(features) != len(p):
        raise ValueError(f"features must be [N, D] with N = {len(p)}, got shape {tuple(features.shape)}")
    sq = torch.einsum("nc,nc->n", p, p)[:, None]
    dist = torch.addcmul(sq + 1, p, p.new_tensor(-2.0)).clamp_min_(0).sqrt_()  # ||p - e_c||, [N, C]
    score = torch.einsum("nc,nc->n", p, dist) * torch.linalg.vector_norm(features.float(), dim=1)
    # a NaN/inf in the probabilities or the features reaches the score: one check, at the end
    return check_finite(score, "probs or features")


def variation_ratio(member_probs: torch.Tensor) -> torch.Tensor:
    """1 - (votes of the modal class) / K over the K members' predicted classes ([K, N, C]) (Freeman
    1965; Beluch et al. 2018). Ties of the vote count once."""
    member_probs = _check_stack(member_probs, "member_probs")
    k, _, c = member_probs.shape
    votes = torch.nn.functional.one_hot(member_probs.argmax(dim=2), c).sum(dim=0)  # [N, C]
    return 1.0 - votes.max(dim=1).values.float() / k


def mean_entropy(member_probs: torch.Tensor) -> torch.Tensor:
    """Entropy of the members' mean prediction ([K, N, C] -> [N]), the ensemble's predictive entropy."""
    return entropy(_check_stack(member_probs, "member_probs").mean(dim=0))


def fisher_embeddings(probs: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Per sample, the C x (C*D) factor V with V^T V = sum_c p_c g_c g_c^T, the Fisher information of
    the last layer's weights, g_c = (p - e_c) (x) h the gradient of the loss for label c: row c is
    sqrt(p_c) g_c. [N, C, C*D] (use only for small problems; :func:`bait` never builds it)."""
    a = _fisher_factor(_check_probs(probs).double())
    h = check_finite(features, "features").double()
    return torch.einsum("nck,nd->nckd", a, h).flatten(2)


def _fisher_factor(p: torch.Tensor) -> torch.Tensor:
    """A[n, c, :] = sqrt(p_c) (p - e_c): the class part of the Fisher factor, [N, C, C]."""
    eye = torch.eye(p.shape[1], dtype=p.dtype)
    return p.sqrt()[:, :, None] * (p[:, None, :] - eye[None])


def bait_objective(embeddings: torch.Tensor, chosen: list[int] | torch.Tensor, fisher: torch.Tensor,
                   base: torch.Tensor) -> float:
    """tr((base + sum_{i in chosen} V_i^T V_i)^-1 fisher): BAIT's objective, computed directly (for
    tests and for checking :func:`bait` on small problems); ``embeddings`` are [N, C, E] factors."""
    v = embeddings[torch.as_tensor(chosen, dtype=torch.long)]
    m = base + torch.einsum("nce,ncf->ef", v, v)
    return float(torch.linalg.solve(m, fisher).diagonal().sum())


def bait(probs: torch.Tensor, features: torch.Tensor, labeled: torch.Tensor, budget: int, lam: float = 1.0,
         oversample: int = 2, chunk: int = 1024) -> torch.Tensor:
    """BAIT (Ash et al. 2021): choose the batch S that minimises tr(M_S^-1 F), F the mean Fisher
    information of the last layer over all rows (the pool), M_S = lam I + (sum over the labeled rows
    and S of I_x) / (L + budget). Greedy forward selection of ``oversample * budget`` rows (each the
    largest decrease of the trace), then backward pruning to ``budget`` (each time the removal that
    raises it least). Returns positions of unlabeled rows in the order kept.

    The Fisher of a row is V^T V with V = A (x) h^T (:func:`fisher_embeddings`), so every
    per-row quantity is a C x C matrix: h^T M^-1 h and h^T M^-1 F M^-1 h contracted per class block
    (one O(N (C D)^2) pass at the start), then rank-C Woodbury updates after each pick change them by
    O(N C^2 D). Memory: a few (C D)^2 matrices in float64 plus O(N C^2)."""
    p = _check_probs(probs).double()
    h = check_finite(features, "features").double()
    if h.ndim != 2 or len(h) != len(p):
        raise ValueError(f"features must be [N, D] with N = {len(p)}, got shape {tuple(h.shape)}")
    labeled = torch.as_tensor(labeled, dtype=torch.bool)
    budget = min(int(budget), int((~labeled).sum()))
    if budget <= 0:
        return torch.empty(0, dtype=torch.long)
    state = _Bait(p, h, labeled, budget, lam, chunk)
    free = (~labeled).clone()
    chosen: list[int] = []
    for _ in range(min(oversample * budget, int(free.sum()))):
        rows = free.nonzero().squeeze(1)
        gain = state.trace_change(1.0, rows)
        i = int(rows[torch.argmax(gain)])  # the first maximum: ties to the lowest position
        chosen.append(i)
        free[i] = False
        state.commit(i, 1.0)
    while len(chosen) > budget:
        rows = torch.tensor(chosen)
        j = int(torch.argmax(state.trace_change(-1.0, rows)))
        state.commit(chosen.pop(j), -1.0)
    return torch.tensor(chosen, dtype=torch.long)


class _Bait:
    """BAIT's running state: M^-1, G = M^-1 F M^-1 and their per-row contractions (see :func:`bait`)."""

    def __init__(self, p: torch.Tensor, h: torch.Tensor, labeled: torch.Tensor, budget: int, lam: float,
                 chunk: int):
        n, c = p.shape
        d = h.shape[1]
        self.h, self.n, self.c, self.d, self.e, self.chunk = h, n, c, d, c * d, chunk
        self.a = _fisher_factor(p)  # [N, C, C]
        scale = 1.0 / (int(labeled.sum()) + budget)
        self.fisher = (self.gram(torch.arange(n)) / n).contiguous()
        m = lam * torch.eye(self.e, dtype=torch.float64) + self.gram(labeled.nonzero().squeeze(1)) * scale
        self.m_inv = torch.linalg.inv(m).contiguous()  # row-major: the E x C products below read it row by row
        self.g = (self.m_inv @ self.fisher @ self.m_inv).contiguous()  # M^-1 F M^-1
        self.mh, self.gh = self.contract(self.m_inv), self.contract(self.g)  # h^T M^-1 h, h^T G h per class block
        self.va = self.a * scale ** 0.5  # the rows' factors, scaled like the labeled Fisher

    def gram(self, rows: torch.Tensor) -> torch.Tensor:
        """Sum over ``rows`` of V^T V, [E, E], in chunks."""
        a, h, c, d = self.a, self.h, self.c, self.d
        out = torch.zeros(c, c, d, d, dtype=torch.float64)
        step = max(1, self.chunk // c)
        for s in range(0, len(rows), step):
            r = rows[s:s + step]
            aa = torch.einsum("nck,ncl->nkl", a[r], a[r])  # A^T A, [n, C, C]
            z = (aa.reshape(len(r), c * c, 1) * h[r, None, :]).reshape(len(r), -1)  # [n, C*C*D]
            out += (z.T @ h[r]).reshape(c, c, d, d)
        return out.permute(0, 2, 1, 3).reshape(self.e, self.e)

    def contract(self, mat: torch.Tensor) -> torch.Tensor:
        """h^T mat h per class block: [N, C, C]."""
        blocks = mat.reshape(self.c, self.d, self.c, self.d)
        out = torch.empty(self.n, self.c, self.c, dtype=torch.float64)
        for s in range(0, self.n, self.chunk):
            hh = self.h[s:s + self.chunk]
            out[s:s + self.chunk] = torch.einsum("nd,kdlf,nf->nkl", hh, blocks, hh)
        return out

    def trace_change(self, sign: float, rows: torch.Tensor) -> torch.Tensor:
        """tr((sign I + V M^-1 V^T)^-1 V G V^T) per row: the decrease of the trace when a row is
        added (sign +1), minus its increase when removed (sign -1)."""
        ar = self.va[rows]
        inner = ar @ self.mh[rows] @ ar.transpose(1, 2) + sign * torch.eye(self.c, dtype=torch.float64)
        return torch.linalg.solve(inner, ar @ self.gh[rows] @ ar.transpose(1, 2)).diagonal(dim1=1, dim2=2).sum(1)

    def commit(self, i: int, sign: float) -> None:
        """M <- M + sign V_i^T V_i: Woodbury updates of M^-1, G and the per-row contractions."""
        c, d, h, fisher = self.c, self.d, self.h, self.fisher
        vi = (self.va[i][:, :, None] * h[i]).reshape(c, self.e)  # [C, E]
        q = self.m_inv @ vi.T  # [E, C]
        k = torch.linalg.inv(sign * torch.eye(c, dtype=torch.float64) + vi @ q)  # [C, C]
        r = self.m_inv @ (fisher @ q)  # M^-1 F Q, [E, C]
        qfq = q.T @ fisher @ q
        # M'^-1 = M^-1 - Q K Q^T;  G' = G - Q K R^T - R K Q^T + Q K (Q^T F Q) K Q^T, as one rank-2C update
        # [Q R] [[K qfq K, -K], [-K, 0]] [Q R]^T (two in-place passes over the E x E matrices per pick)
        self.m_inv.addmm_(q @ k, q.T, alpha=-1.0)
        qr = torch.cat([q, r], dim=1)
        mid = torch.cat([torch.cat([k @ qfq @ k, -k], dim=1), torch.cat([-k, torch.zeros_like(k)], dim=1)])
        self.g.addmm_(qr @ mid, qr.T)
        hq = torch.einsum("nd,kdl->nkl", h, q.reshape(c, d, c))  # h^T Q per class block, [N, C, C]
        hr = torch.einsum("nd,kdl->nkl", h, r.reshape(c, d, c))
        self.mh = self.mh - hq @ k @ hq.transpose(1, 2)
        self.gh = (self.gh - hq @ k @ hr.transpose(1, 2) - hr @ k @ hq.transpose(1, 2)
                   + hq @ (k @ qfq @ k) @ hq.transpose(1, 2))


def deepfool(logits_fn, x: torch.Tensor, max_iter: int = 50, overshoot: float = 0.02,
             classes: int | None = 10) -> torch.Tensor:
    """DeepFool (Moosavi-Dezfooli et al. 2016), batched: the L2 norm of the smallest perturbation of
    each input that changes its predicted class, as DFAL ranks samples (Ducoffe & Precup 2018).

    Each step linearises the candidate classes k against the original prediction k0 at x + r:
    w_k = grad f_k - grad f_k0, f'_k = f_k - f_k0, takes the closest boundary
    l = argmin_k |f'_k| / ||w_k|| and moves r by |f'_l| / ||w_l||^2 w_l; the perturbation applied is
    (1 + ``overshoot``) r. The candidate classes are each sample's ``classes`` highest logits at x
    (DeepFool's default 10; None: all). A sample stops once its prediction changes; one that has not
    after ``max_iter`` steps, or that reaches a point without input gradient, keeps the norm reached (a
    lower bound); one without input gradient at the start (dead units) cannot be moved at all and gets
    the largest float32, ranking it farthest. ``logits_fn`` maps a batch of inputs to logits and must
    treat samples independently (a model in eval mode). Costs ``classes`` backward passes per step
    over the samples still running. Returns float32 norms [N]."""
    x0 = x.detach().float()
    n = len(x0)
    r = torch.zeros_like(x0)
    stuck = torch.zeros(n, dtype=torch.bool, device=x0.device)
    with torch.enable_grad():
        with torch.no_grad():
            first = logits_fn(x0).float()
        m = first.shape[1] if classes is None else min(int(classes), first.shape[1])
        top = first.topk(m, dim=1).indices  # [N, m]; column 0 is the prediction k0
        k0 = top[:, 0]
        active = torch.arange(n, device=x0.device)
        for _ in range(max_iter):
            xi = (x0[active] + (1 + overshoot) * r[active]).requires_grad_(True)
            logits = logits_fn(xi).float()
            check_finite(logits, "logits")
            still = logits.argmax(dim=1) == k0[active]
            if not still.any() or m < 2:
                break
            mine = top[active]
            f_top = logits.gather(1, mine)  # [n, m]
            grads = torch.stack([torch.autograd.grad(f_top[:, j].sum(), xi, retain_graph=j < m - 1)[0]
                                 for j in range(m)], dim=1).flatten(2)  # [n, m, P]
            w = (grads[:, 1:] - grads[:, :1])  # [n, m - 1, P]
            f = (f_top[:, 1:] - f_top[:, :1]).detach()  # [n, m - 1]
            norm = w.norm(dim=2)
            best = (f.abs() / norm.clamp_min(1e-12)).argmin(dim=1)
            rows = torch.arange(len(active), device=x0.device)
            step = ((f[rows, best].abs() + 1e-8) / norm[rows, best].pow(2).clamp_min(1e-24))[:, None] * w[rows, best]
            flat = norm[rows, best] == 0  # no gradient towards any boundary: no step can be taken
            stuck[active[still & flat & (r[active].flatten(1) == 0).all(dim=1)]] = True  # (and none was)
            keep = (still & ~flat).nonzero().squeeze(1)
            r[active[keep]] += step[keep].view(-1, *x0.shape[1:]).detach()
            active = active[keep]
    out = ((1 + overshoot) * r).flatten(1).norm(dim=1).float()
    return out.masked_fill(stuck, torch.finfo(torch.float32).max)
