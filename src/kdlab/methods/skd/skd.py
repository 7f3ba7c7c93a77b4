"""SKD: structured knowledge distillation for semantic segmentation.

Liu et al., "Structured Knowledge Distillation for Semantic Segmentation", CVPR 2019, §3.1,
Eq. 4: ``L = L_mc + lambda_pi L_pi + lambda_pa L_pa - lambda_d L_ho``, three terms that are
each a setting and combine freely:

- pixel-wise: KL between the per-pixel class distributions of the score maps;
- pair-wise: squared difference of the cosine-similarity matrices between the (max-pooled)
  spatial positions of a feature map, by default the decoder's feature before the final
  convolution (the authors' ``feat_ind=-5``: the PSP module's output; CIRKD's
  ``x_feat_after_aspp``);
- holistic: an adversarial game whose critic (:class:`~kdlab.methods.skd.discriminator.Critic`)
  tells the teacher's score maps from the student's.

Defaults are the authors' code (irfanICMLL/structure_knowledge_distillation @ ce208e1:
``run_train_val.sh``, ``utils/train_options.py``, ``networks/kd_model.py``,
``utils/criterion.py``): lambda_pi = 10, lambda_pa = 0.5 with pooling scale 0.5 and detached
norms, WGAN-GP with lambda_d = 0.1 on both sides and lambda_gp = 10, critic width 64 on the
run's LR schedule, called teacher first, the pixel term's per-image means summed over the
batch (``pixel_reduction: image``), the critic trained by SGD (momentum 0.9, weight decay
5e-4) and normalised by SAGAN's spectral norm. kdlab's earlier choices are settings: the pixel
term averaged over every pixel (``pixel_reduction: pixel``, as CIRKD's KD; the loss then does
not grow with the batch size), Adam for the critic (``critic_optimizer: adam``, betas 0.9,
0.99, as CIRKD) and torch's ``spectral_norm`` (``spectral_norm: torch``); the scenes and VOC
recipes set them (the scenes table's runs used them). ``recipes/cityscapes/skd_authors``
sets all of the authors' values. CIRKD's SKD row (winycg/CIRKD @ 48eb81b, ``train_kd.py`` with
``train_scripts/train_kd/train_skd.sh``) is the same method with other settings: pixel 1
averaged over pixels, pair-wise 10 with a fixed 2x2 window and ``F.normalize``, hinge with
weights 0.001 (student) / 0.1 (critic) and no penalty, Adam at a constant LR, student first,
SAGAN's spectral norm (``recipes/cityscapes/skd``).

The critic is stepped by its own optimiser (:meth:`SKD.separate_optimizers`) after the run's
single backward. The two sides never share a gradient: the student's term ``holistic`` reads
the critic through detached parameters (``torch.func.functional_call``), the critic's term
``critic`` reads detached score maps. That is both references' alternation (student step,
then critic step on the maps computed before the student's update) in one backward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.optim import Optimizer

from kdlab.core.settings import setting
from kdlab.errors import UserError
from kdlab.methods import METHODS
from kdlab.methods.base import Batch, Distiller, Losses
from kdlab.methods.shared.dense import pixel_kl_loss
from kdlab.methods.skd.discriminator import SPECTRAL_NORMS, Critic
from kdlab.methods.skd.losses import (
    PAIR_NORMS,
    PAIR_POOLS,
    critic_loss,
    generator_loss,
    gradient_penalty,
    hinge_critic_loss,
    pairwise_similarity_loss,
)
from kdlab.models.staged.view import Features, Staged

#: the critic optimisers: Adam (betas 0.9, 0.99; TorchDistiller's SemSeg-distill, CIRKD), SGD
#: (momentum 0.9, weight decay 5e-4; the SKD authors' ``networks/kd_model.py``)
CRITIC_OPTIMIZERS = ("adam", "sgd")
#: the adversarial losses
ADVERSARIAL = ("wgan-gp", "hinge")
#: pixel term: ``image`` sums over the images of the batch the per-image mean over pixels (the
#: SKD authors' ``CriterionPixelWise``), ``pixel`` averages over all pixels (CIRKD's KD)
PIXEL_REDUCTIONS = ("image", "pixel")
#: the critic's learning rate: the run's schedule (the SKD authors poly-decay it) or constant
#: (CIRKD never adjusts it)
CRITIC_SCHEDULES = ("run", "constant")
#: the critic's passes in its step: teacher maps first (the SKD authors: T, S, penalty) or the
#: student's (CIRKD: S, T); the order moves the critic's BatchNorm statistics and its
#: spectral-norm estimates
CRITIC_ORDERS = ("teacher_first", "student_first")


def score_map_size(net: Staged) -> tuple[int, int]:
    """Spatial size of a segmentation network's score map for its declared input shape."""
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            logits = net.features(torch.zeros(1, *net.input_shape, device=device)).logits
    finally:
        net.train(was_training)
    if logits.dim() != 4:
        raise UserError("SKD's holistic term needs score maps (B, K, h, w); the teacher returns "
                        f"logits of shape {tuple(logits.shape)}: use segmentation networks.")
    return int(logits.shape[-2]), int(logits.shape[-1])


@METHODS.register("skd")
class SKD(Distiller):
    """Structured KD (Liu et al., CVPR 2019): pixel-wise, pair-wise and holistic terms."""

    tasks = ("segmentation",)

    @dataclass
    class Config:
        """Weights 0 switch a term off. ``pair_stage`` None takes the decoder feature
        (``Features.embedding``), k the 1-based backbone stage k."""

        ce_weight: float = setting(1.0, range=">= 0")
        pixel_weight: float = setting(10.0, range=">= 0")  # lambda_pi
        # image: per-image pixel means summed over the batch (the authors') | pixel: mean
        # over all pixels (CIRKD's KD batchmean)
        pixel_reduction: str = setting("image", choices=PIXEL_REDUCTIONS)
        # the authors' pixel-wise term has none (tau = 1)
        temperature: float = setting(1.0, range="> 0")
        # lambda_pa (run_train_val.sh; the option default is 1.0)
        pair_weight: float = setting(0.5, range=">= 0")
        # scale: window int(size * pool_scale) | kernel: pool_kernel
        pair_pool: str = setting("scale", choices=PAIR_POOLS)
        # of the teacher's map: 2x2 grids of even maps, 3x3 of odd
        pool_scale: float = setting(0.5, range="(0, 1]")
        # pair_pool kernel: a fixed window and stride (CIRKD's 2)
        pool_kernel: int = setting(2, range=">= 1")
        pair_stage: int | None = setting(None, range=">= 1")
        # detached: f / (|f| + 1e-8), constant norm | normalize
        pair_norm: str = setting("detached", choices=PAIR_NORMS)
        adversarial: str = setting("wgan-gp", choices=ADVERSARIAL)
        # lambda_d on the student's term (CIRKD: lambda_adv)
        generator_weight: float = setting(0.1, range=">= 0")
        # lambda_d on the critic's term (CIRKD: lambda_d)
        critic_weight: float = setting(0.1, range=">= 0")
        # when given: both weights above (:attr:`holistic_weights`)
        holistic_weight: float | None = setting(None, range=">= 0")
        # lambda_gp, inside the critic's term (wgan-gp only)
        gp_weight: float = setting(10.0, range=">= 0")
        critic_width: int = setting(64, range=">= 1")  # adv_conv_dim
        critic_lr: float = setting(4e-4, range="> 0")  # lr_d
        # sgd: momentum 0.9, wd 5e-4 (the authors') | adam: betas (0.9, 0.99) (CIRKD's)
        critic_optimizer: str = setting("sgd", choices=CRITIC_OPTIMIZERS)
        # run: the run's LR schedule | constant
        critic_schedule: str = setting("run", choices=CRITIC_SCHEDULES)
        # teacher_first: T, S, penalty | student_first
        critic_order: str = setting("teacher_first", choices=CRITIC_ORDERS)
        # sagan (the SKD authors' and CIRKD's) | torch (torch's spectral_norm)
        spectral_norm: str = setting("sagan", choices=tuple(SPECTRAL_NORMS))
        condition_on_image: bool = False  # the paper's D(Q|I); the authors' critic sees Q only

        def check(self, where: str, task: str | None = None) -> None:
            """One term at least is on."""
            if not (self.pixel_weight or self.pair_weight or self.holistic):
                raise UserError(f"SKD has every term off ({where}.pixel_weight, pair_weight "
                                "and the holistic weights are 0); set one of them above 0.")

        @property
        def holistic_weights(self) -> tuple[float, float]:
            """(student's, critic's) holistic weights: ``holistic_weight`` for both when
            given, else ``generator_weight`` and ``critic_weight``."""
            if self.holistic_weight is not None:
                return self.holistic_weight, self.holistic_weight
            return self.generator_weight, self.critic_weight

        @property
        def holistic(self) -> bool:
            """Whether the critic is built (a term of either side is on)."""
            return any(self.holistic_weights)

    def setup(self) -> None:
        assert self.teacher is not None
        c = self.cfg
        if c.pair_stage is not None:
            n = min(self.student.num_stages, self.teacher.num_stages)
            if c.pair_stage > n:
                raise UserError(f"method.pair_stage {c.pair_stage} is outside the stages; use "
                                f"1..{n} (1-based) or leave it unset for the decoder feature.")
        if c.holistic:
            h, w = score_map_size(self.teacher)
            image_channels = self.teacher.input_shape[0] if c.condition_on_image else 0
            self.critic = Critic(self.teacher.num_classes + image_channels,
                                 input_size=min(h, w), width=c.critic_width,
                                 spectral=c.spectral_norm)

    def separate_optimizers(
        self,
    ) -> dict[str, tuple[list[nn.Parameter], Callable[[list[nn.Parameter]], Optimizer]]]:
        c = self.cfg
        if not c.holistic:
            return {}
        constant = c.critic_schedule == "constant"

        def factory(params: list[nn.Parameter]) -> Optimizer:
            opt: Optimizer
            if c.critic_optimizer == "adam":
                opt = torch.optim.Adam(params, lr=c.critic_lr, betas=(0.9, 0.99))
            else:
                opt = torch.optim.SGD(params, lr=c.critic_lr, momentum=0.9, weight_decay=5e-4)
            if constant:  # the trainer leaves its LR alone (Distiller.separate_optimizers)
                opt.kdlab_schedule = "constant"  # type: ignore[attr-defined]
            return opt

        return {"critic": (list(self.critic.parameters()), factory)}

    # ----------------------------------------------------------------- the terms
    def _pair_features(self, out: Features) -> Tensor:
        k = self.cfg.pair_stage
        return out.embedding if k is None else out.stages[k - 1]

    def _critic_inputs(self, student: Tensor, teacher: Tensor,
                       images: Tensor) -> tuple[Tensor, Tensor]:
        """The two score maps at the teacher's size, with the image when conditioned."""
        if student.shape[-2:] != teacher.shape[-2:]:
            student = F.interpolate(student, size=teacher.shape[-2:], mode="bilinear",
                                    align_corners=False)
        if self.cfg.condition_on_image:
            small = F.adaptive_avg_pool2d(images, teacher.shape[-2:]).to(teacher.dtype)
            student, teacher = torch.cat([student, small], 1), torch.cat([teacher, small], 1)
        return student, teacher

    def _holistic(self, student: Tensor, teacher: Tensor, images: Tensor) -> Losses:
        c = self.cfg
        q_s, q_t = self._critic_inputs(student, teacher, images)
        # the student's step: the critic is a fixed function here (no gradient to its weights)
        frozen = {name: p.detach() for name, p in self.critic.named_parameters()}
        g = generator_loss(functional_call(self.critic, frozen, (q_s,)))
        # the critic's step: on detached maps, so nothing reaches the student
        q_s, q_t = q_s.detach(), q_t.detach()
        if c.critic_order == "teacher_first":
            d_t = self.critic(q_t)
            d_s = self.critic(q_s)
        else:
            d_s = self.critic(q_s)
            d_t = self.critic(q_t)
        if c.adversarial == "hinge":
            d = hinge_critic_loss(d_s, d_t)
        else:
            d = critic_loss(d_s, d_t)
            if c.gp_weight:
                d = d + c.gp_weight * gradient_penalty(self.critic, q_t, q_s)
        out: Losses = {}
        generator_weight, critic_weight = c.holistic_weights
        if generator_weight:
            out["holistic"] = generator_weight * g
        if critic_weight:
            out["critic"] = critic_weight * d
        return out

    def losses(self, batch: Batch, student: Features, teacher: Features) -> Losses:
        c = self.cfg
        out: Losses = {}
        if c.pixel_weight:
            pixel = pixel_kl_loss(student.logits, teacher.logits, c.temperature)
            if c.pixel_reduction == "image":
                pixel = pixel * student.logits.shape[0]
            out["pixel"] = c.pixel_weight * pixel
        if c.pair_weight:
            out["pair"] = c.pair_weight * pairwise_similarity_loss(
                self._pair_features(student), self._pair_features(teacher),
                pool=c.pair_pool, pool_scale=c.pool_scale, kernel=c.pool_kernel,
                norm=c.pair_norm)
        if c.holistic:
            out.update(self._holistic(student.logits, teacher.logits, batch.images))
        return out
