"""CRD's memory banks: one L2-normalised embedding per training sample, for each network.

Tian, Krishnan & Isola, "Contrastive Representation Distillation", ICLR 2020 (Sec. 3.4,
memory buffer with momentum updates, after Wu et al. 2018); negatives are drawn uniformly
(:func:`sample_negatives`) or, as the authors' CIFAR loader does, from the other classes
(:func:`sample_class_negatives`). The authors' code runs on one GPU;
under torch.distributed the banks and the normalising constants are kept identical on every
process (see :class:`ContrastMemory`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from kdlab.errors import UserError
from kdlab.runtime.collectives import all_gather_rows, all_reduce_sum, world_size

# Score against the whole bank (one GEMM, then pick the sampled columns) while the bank has at
# most this many rows per sampled row; above it, gather the sampled rows. Gathering copies
# b (K+1) d floats and is memory-bound: on one CPU core, b = 64, d = 128, K = 16384, it takes
# ~1 s per bank per step whatever N is, the GEMM 10 ms at N = 6,000 and 200 ms at N = 200,000.
DENSE_SCORING_MAX_RATIO = 16
#: how negatives are drawn: ``class`` (other classes, distinct: the authors' CIFAR loader)
#: or ``uniform`` (any other sample, with replacement: their memory's own sampler)
NEGATIVES = ("class", "uniform")


def sample_negatives(index: Tensor, num_data: int, k: int,
                     generator: torch.Generator | None = None) -> Tensor:
    """``(b, k + 1)`` bank rows: column 0 the positive ``index``, then ``k`` uniform negatives
    drawn with replacement from the other ``num_data - 1`` samples."""
    b = index.shape[0]
    draw = torch.randint(0, num_data - 1, (b, k), device=index.device, generator=generator)
    draw = draw + (draw >= index.view(-1, 1)).long()  # skip the positive itself
    return torch.cat([index.view(-1, 1), draw], dim=1)


def sample_class_negatives(index: Tensor, labels: Tensor, k: int,
                           generator: torch.Generator | None = None) -> Tensor:
    """``(b, k + 1)`` bank rows: column 0 the positive ``index``, then ``k`` negatives of
    *other classes* (``labels``: the class of every training sample), distinct within a row
    (drawn with replacement only where a class has fewer than ``k`` samples of other
    classes). This is how the CRD authors' CIFAR loader draws them (``mode 'exact'``:
    ``np.random.choice(cls_negative[target], k, replace=k > len(cls_negative[target]))``)."""
    labels = labels.to(index.device)
    other = labels.view(1, -1) != labels[index].view(-1, 1)  # (b, N)
    counts = other.sum(1)
    if int(counts.min()) == 0:
        raise UserError("CRD's class-conditional negatives need samples of at least two "
                        "classes in the training set; set method.negatives: uniform.")
    weights = other.to(torch.float64)
    draw = torch.empty(index.shape[0], k, dtype=torch.long, device=index.device)
    for few in (False, True):  # rows with enough other-class samples draw without replacement
        rows = (counts < k) if few else (counts >= k)
        if rows.any():
            draw[rows] = torch.multinomial(weights[rows], k, replacement=few,
                                           generator=generator)
    return torch.cat([index.view(-1, 1), draw], dim=1)


def bank_logits(bank: Tensor, v: Tensor, rows: Tensor) -> Tensor:
    """``<v_i, bank[rows_ij]>`` for every sample ``i`` and sampled row ``j``, shape ``(b, K + 1)``.

    Gradients reach ``v`` only (the bank is a buffer). Both branches compute the same numbers;
    which one runs depends on the sizes only (see ``DENSE_SCORING_MAX_RATIO``). The dense
    branch keeps a copy of the bank for the backward pass, because the momentum update writes
    into the bank before the backward runs.
    """
    bank = bank.detach()
    if bank.shape[0] <= DENSE_SCORING_MAX_RATIO * rows.shape[1]:
        return (v @ bank.clone().t()).gather(1, rows)
    return torch.bmm(bank[rows], v.unsqueeze(2)).squeeze(2)


class ContrastMemory(nn.Module):
    """Two memory banks (student and teacher embeddings) and the normalised NCE scores.

    The banks and the normalising constants Z are buffers: they travel with the
    ``state_dict`` into every checkpoint. Scores are ``exp(<v, m> / T) / Z`` where Z is
    fixed from the first batch (mean score times ``num_data``), as in the paper's NCE.
    After scoring, the positives' rows are moved towards the new embeddings:
    ``m <- normalise(momentum * m + (1 - momentum) * v)``.

    Synchronised under torch.distributed (world size > 1, training mode): scoring stays local
    (gradients reach this process's embeddings only), but every process applies every
    process's updates, rank 0's rows first, then rank 1's, and so on; a sample in the batches
    of two ranks (DistributedSampler's padding) is thus moved twice, in rank order. Z is fixed
    from the mean of all processes' first-batch scores. Banks and Z therefore stay identical
    on every process, as in one process applying the same updates. Each training step runs
    three small collectives (batch sizes, indices, embeddings), so every process must call
    the forward equally often; in evaluation mode nothing is exchanged. Hence
    ``keeps_buffers_in_sync``: kdlab's DDP wrapper broadcasts these buffers once instead of
    before every forward (:func:`kdlab.training.distributed.wrap`).
    """

    keeps_buffers_in_sync = True

    def __init__(self, dim: int, num_data: int, num_negatives: int,
                 temperature: float = 0.07, momentum: float = 0.5,
                 negatives: str = "uniform") -> None:
        super().__init__()
        if num_negatives >= num_data:
            raise UserError(
                f"CRD draws {num_negatives} negatives but the training set has only "
                f"{num_data} samples; set method.num_negatives below {num_data}."
            )
        self.num_data = num_data
        self.num_negatives = num_negatives
        self.negatives = negatives
        #: the class of every training sample (``negatives: class``), set by
        #: :meth:`use_labels`; not state: the trainer hands it over at every start
        self.labels: Tensor | None = None
        self.temperature = temperature
        self.momentum = momentum
        std = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("bank_student", torch.rand(num_data, dim).mul_(2 * std).sub_(std))
        self.register_buffer("bank_teacher", torch.rand(num_data, dim).mul_(2 * std).sub_(std))
        self.register_buffer("z_student", torch.tensor(-1.0))
        self.register_buffer("z_teacher", torch.tensor(-1.0))

    def forward(self, v_student: Tensor, v_teacher: Tensor, index: Tensor,
                rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Scores ``(b, K + 1)`` of the student embeddings against the teacher bank, and of
        the teacher embeddings against the student bank. ``rows`` overrides the sampled
        bank rows (tests)."""
        if index.min() < 0 or index.max() >= self.num_data:
            raise UserError(
                f"CRD got sample index {int(index.max())} outside its memory bank of "
                f"{self.num_data}; build the method with the training set's size."
            )
        if rows is None:
            rows = self.draw_rows(index)
        # the banks' dtype, at least float32 even under autocast: exp(1 / 0.07) overflows
        # float16; a float64 model (parity checks) keeps its banks and codes in float64
        dtype = torch.promote_types(self.bank_student.dtype, torch.float32)
        v_student, v_teacher = v_student.to(dtype), v_teacher.to(dtype)
        s_scores = torch.exp(bank_logits(self.bank_teacher, v_student, rows) / self.temperature)
        t_scores = torch.exp(bank_logits(self.bank_student, v_teacher, rows) / self.temperature)
        if self.z_student < 0 or self.z_teacher < 0:
            self._fix_normalisers(s_scores.detach(), t_scores.detach())
        s_scores = s_scores / self.z_student
        t_scores = t_scores / self.z_teacher
        if self.training:
            self.update(v_student, v_teacher, index)
        return s_scores, t_scores

    def use_labels(self, labels: Tensor | None) -> None:
        """The class of every training sample by dataset index (``negatives: class``)."""
        if labels is not None and labels.shape != (self.num_data,):
            raise UserError(f"CRD got {tuple(labels.shape)} training labels for a memory of "
                            f"{self.num_data} samples; give one label per training sample.")
        self.labels = labels

    def draw_rows(self, index: Tensor) -> Tensor:
        """The bank rows of a batch: column 0 the positives, then the sampled negatives."""
        if self.negatives == "uniform":
            return sample_negatives(index, self.num_data, self.num_negatives)
        if self.labels is None:
            raise UserError("CRD's class-conditional negatives (method.negatives: class, the "
                            "authors') need the training labels, which this run's loader does "
                            "not give; set method.negatives: uniform.")
        self.labels = self.labels.to(index.device)
        return sample_class_negatives(index, self.labels, self.num_negatives)

    def _fix_normalisers(self, s_scores: Tensor, t_scores: Tensor) -> None:
        """Set the unset Z to the mean score times ``num_data``; the mean runs over every
        process's scores when training under torch.distributed."""
        if self.training and world_size() > 1:
            totals = torch.stack([s_scores.double().sum(), t_scores.double().sum(),
                                  torch.tensor(s_scores.numel(), dtype=torch.float64,
                                               device=s_scores.device)])
            all_reduce_sum(totals)
            s_mean, t_mean = float(totals[0] / totals[2]), float(totals[1] / totals[2])
        else:
            s_mean, t_mean = float(s_scores.mean()), float(t_scores.mean())
        if self.z_student < 0:
            self.z_student.fill_(s_mean * self.num_data)
        if self.z_teacher < 0:
            self.z_teacher.fill_(t_mean * self.num_data)

    @torch.no_grad()
    def update(self, v_student: Tensor, v_teacher: Tensor, index: Tensor) -> None:
        """Momentum update of the positives' rows, then L2 normalisation; under
        torch.distributed, every process's rows, in rank order (see the class docstring)."""
        v_student, v_teacher = v_student.detach(), v_teacher.detach()
        if world_size() == 1:
            self._move_rows(v_student, v_teacher, index)
            return
        codes = torch.cat([v_student, v_teacher.to(v_student.dtype)], dim=1)
        dim = v_student.shape[1]
        for rank_index, rank_codes in all_gather_rows(index.to(codes.device), codes):
            self._move_rows(rank_codes[:, :dim], rank_codes[:, dim:], rank_index)

    def _move_rows(self, v_student: Tensor, v_teacher: Tensor, index: Tensor) -> None:
        for bank, v in ((self.bank_student, v_student), (self.bank_teacher, v_teacher)):
            new = bank[index] * self.momentum + v * (1 - self.momentum)
            bank[index] = nn.functional.normalize(new, dim=1)
