"""SKD: structured knowledge distillation for semantic segmentation.

Liu et al., "Structured Knowledge Distillation for Semantic Segmentation", CVPR 2019, §3.1,
Eq. 4: ``L = L_mc + lambda_pi L_pi + lambda_pa L_pa - lambda_d L_ho``, three terms that are
each a setting and combine freely:

- pixel-wise: KL between the per-pixel class distributions of the score maps (averaged over
  pixels and batch);
- pair-wise: squared difference of the cosine-similarity matrices between the (max-pooled)
  spatial positions of a feature map, by default the decoder's feature before the final
  convolution (the authors' ``feat_ind=-5``: the PSP module's output);
- holistic: a Wasserstein GAN whose critic (:class:`~kdlab.methods.skd.discriminator.Critic`) tells
  the teacher's score maps from the student's, trained with a gradient penalty.

Defaults are the authors' (irfanICMLL/structure_knowledge_distillation: ``run_train_val.sh``
and ``utils/train_options.py``): lambda_pi = 10, lambda_pa = 0.5 with pooling scale 0.5,
lambda_d = 0.1, lambda_gp = 10, critic width 64, critic learning rate 4e-4.

The critic is stepped by its own optimiser (:meth:`SKD.separate_optimizers`) after the run's
single backward. The two sides never share a gradient: the student's term ``holistic`` reads
the critic through detached parameters (``torch.func.functional_call``), the critic's term
``critic`` reads detached score maps. That is the authors' alternation (student step, then
critic step on the maps computed before the student's update) in one backward.
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
from kdlab.methods.skd.discriminator import Critic
from kdlab.methods.skd.losses import (
    critic_loss,
    generator_loss,
    gradient_penalty,
    pairwise_similarity_loss,
)
from kdlab.models.staged.view import Features, Staged

#: the critic optimisers: Adam as in the authors' later code (TorchDistiller's SemSeg-distill,
#: also CIRKD), SGD as in the SKD repository's ``networks/kd_model.py``
CRITIC_OPTIMIZERS = ("adam", "sgd")


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
        # the authors' pixel-wise term has none (tau = 1)
        temperature: float = setting(1.0, range="> 0")
        # lambda_pa (run_train_val.sh; the option default is 1.0)
        pair_weight: float = setting(0.5, range=">= 0")
        # pooling window = int(size * scale), so a 2x2 grid
        pool_scale: float = setting(0.5, range="(0, 1]")
        pair_stage: int | None = setting(None, range=">= 1")
        pair_detach_norm: bool = True  # the authors' similarity divides by detached norms
        # lambda_d, on the student's and the critic's terms
        holistic_weight: float = setting(0.1, range=">= 0")
        # lambda_gp, inside the critic's term (so 0.1 * 10 in all)
        gp_weight: float = setting(10.0, range=">= 0")
        critic_width: int = setting(64, range=">= 1")  # adv_conv_dim
        critic_lr: float = setting(4e-4, range="> 0")  # lr_d
        # adam: betas (0.9, 0.99); sgd: momentum 0.9, wd 5e-4
        critic_optimizer: str = setting("adam", choices=CRITIC_OPTIMIZERS)
        condition_on_image: bool = False  # the paper's D(Q|I); the authors' critic sees Q only

        def check(self, where: str, task: str | None = None) -> None:
            """One term at least is on."""
            if not (self.pixel_weight or self.pair_weight or self.holistic_weight):
                raise UserError(f"SKD has every term off ({where}.pixel_weight, pair_weight "
                                "and holistic_weight are 0); set one of them above 0.")

    def setup(self) -> None:
        assert self.teacher is not None
        c = self.cfg
        if c.pair_stage is not None:
            n = min(self.student.num_stages, self.teacher.num_stages)
            if c.pair_stage > n:
                raise UserError(f"method.pair_stage {c.pair_stage} is outside the stages; use "
                                f"1..{n} (1-based) or leave it unset for the decoder feature.")
        if c.holistic_weight:
            h, w = score_map_size(self.teacher)
            image_channels = self.teacher.input_shape[0] if c.condition_on_image else 0
            self.critic = Critic(self.teacher.num_classes + image_channels,
                                 input_size=min(h, w), width=c.critic_width)

    def separate_optimizers(
        self,
    ) -> dict[str, tuple[list[nn.Parameter], Callable[[list[nn.Parameter]], Optimizer]]]:
        if not self.cfg.holistic_weight:
            return {}
        lr = self.cfg.critic_lr
        if self.cfg.critic_optimizer == "adam":
            def factory(params: list[nn.Parameter]) -> Optimizer:
                return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99))
        else:
            def factory(params: list[nn.Parameter]) -> Optimizer:
                return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
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
        d_t = self.critic(q_t)
        d_s = self.critic(q_s)
        d = critic_loss(d_s, d_t) + c.gp_weight * gradient_penalty(self.critic, q_t, q_s)
        return {"holistic": c.holistic_weight * g, "critic": c.holistic_weight * d}

    def losses(self, batch: Batch, student: Features, teacher: Features) -> Losses:
        c = self.cfg
        out: Losses = {}
        if c.pixel_weight:
            out["pixel"] = c.pixel_weight * pixel_kl_loss(student.logits, teacher.logits,
                                                          c.temperature)
        if c.pair_weight:
            out["pair"] = c.pair_weight * pairwise_similarity_loss(
                self._pair_features(student), self._pair_features(teacher),
                pool_scale=c.pool_scale, detach_norm=c.pair_detach_norm)
        if c.holistic_weight:
            out.update(self._holistic(student.logits, teacher.logits, batch.images))
        return out
