"""The staged view of a network: ``stem -> stages[0..N-1] -> head``.

Feature distillation methods (FitNet, FCFD, SimKD, ReviewKD, FRSKD, ...) need a network's
intermediate features and need to continue a forward pass from any stage with a tensor of
the right shape. Rather than rewriting each backbone to return features, :class:`Staged`
wraps an ordinary network (a torchvision model, one of the CIFAR zoo) and names the modules
that make up each part. ``staged.net`` stays the ordinary model: its ``state_dict`` loads
into the plain architecture, which is what ``kdlab export`` writes.

Indexing is 0-based: ``features(x).stages[i]`` is the output of ``stages[i]`` and
``run_from(i, f)`` feeds ``f`` (shaped like ``stages[i]``'s output) to ``stages[i + 1:]``
and the head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class StageInfo:
    """Shape metadata of one stage's output, found by one dummy forward pass."""

    channels: int
    height: int
    width: int
    post_relu: bool  # True when the output is non-negative (it ends with a ReLU)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


@dataclass
class Features:
    """What a staged forward pass returns.

    ``stages`` are stage outputs (all of them for :meth:`Staged.features`, those after the
    start stage for :meth:`Staged.run_from`), ``embedding`` the pooled penultimate vector,
    ``logits`` the classifier output.
    """

    stages: list[Tensor]
    embedding: Tensor
    logits: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)

    def map(self, fn: Callable[[Tensor], Tensor]) -> Features:
        return Features(
            stages=[fn(s) for s in self.stages],
            embedding=fn(self.embedding),
            logits=fn(self.logits),
            extras={k: fn(v) for k, v in self.extras.items()},
        )


def _global_avg_pool(x: Tensor) -> Tensor:
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class Staged(nn.Module):
    """A network seen as stem, stages and head, built by naming its modules.

    Args:
        net: the ordinary network; registered as ``self.net``.
        stem: dotted names of the modules run, in order, before the first stage.
        stages: for each stage, the dotted names of its modules, run in order.
        classifier: dotted names of the modules that map the pooled vector to logits.
        pre_pool: modules run on the last stage's output before pooling (e.g. a final
            BN-ReLU or 1x1 conv); they belong to the head.
        pool: maps the (pre-pooled) last feature map to the embedding vector.
        input_shape: ``(C, H, W)`` the network expects; used for the metadata pass.
        num_classes: number of classifier outputs.

    The forward pass of the staged view must equal ``net(x)``; the model tests check it
    for every registered model.
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        stem: Sequence[str],
        stages: Sequence[Sequence[str]],
        classifier: Sequence[str],
        input_shape: tuple[int, int, int],
        num_classes: int,
        pre_pool: Sequence[str] = (),
        pool: Callable[[Tensor], Tensor] = _global_avg_pool,
    ) -> None:
        super().__init__()
        self.net = net
        self._stem = [net.get_submodule(n) for n in stem]
        self._stages = [[net.get_submodule(n) for n in names] for names in stages]
        self._pre_pool = [net.get_submodule(n) for n in pre_pool]
        self._classifier = [net.get_submodule(n) for n in classifier]
        self.stem_names = list(stem)  # empty: stage 0 reads the input, so it holds the stem
        self.stage_names = [list(names) for names in stages]
        self.classifier_names = list(classifier)
        self._pool = pool
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self._info: list[StageInfo] | None = None
        self._embedding_dim: int | None = None

    # ----------------------------------------------------------------- structure
    @property
    def num_stages(self) -> int:
        return len(self._stages)

    def stages_after_stem(self) -> list[int]:
        """Indices of the stages after the network's stem: the residual stages.

        A view whose stem is empty (every network of the zoo: FCFD's stage division) runs the
        input through stage 0, which therefore holds the stem: it is left out. A view that
        names its stem separately has no stem among its stages: all are kept. Methods whose
        authors never use the stem (FRSKD, ReviewKD) take these stages by default.
        """
        return list(range(0 if self.stem_names else 1, self.num_stages))

    def stage_modules(self, i: int) -> nn.ModuleList:
        """The modules of stage ``i`` (for optimiser groups, hooks or freezing)."""
        return nn.ModuleList(self._stages[i])

    def classifier_modules(self) -> nn.ModuleList:
        return nn.ModuleList(self._classifier)

    def head_modules(self) -> nn.ModuleList:
        return nn.ModuleList(self._pre_pool + self._classifier)

    @property
    def stage_info(self) -> list[StageInfo]:
        """Channels, spatial size and post-ReLU flag of every stage output."""
        if self._info is None:
            self._describe()
        assert self._info is not None
        return self._info

    @property
    def embedding_dim(self) -> int:
        if self._embedding_dim is None:
            self._describe()
        assert self._embedding_dim is not None
        return self._embedding_dim

    def _describe(self) -> None:
        param = next(self.net.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None and param.is_floating_point() else None
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                x = torch.randn(2, *self.input_shape, device=device, dtype=dtype)
                out = self.features(x)
        finally:
            self.train(was_training)
        self._info = [
            StageInfo(
                channels=f.shape[1],
                height=f.shape[2] if f.dim() == 4 else 1,
                width=f.shape[3] if f.dim() == 4 else 1,
                post_relu=bool((f >= 0).all()),
            )
            for f in out.stages
        ]
        self._embedding_dim = out.embedding.shape[1]

    # ----------------------------------------------------------------- forward parts
    @staticmethod
    def _run(modules: Sequence[nn.Module], x: Tensor) -> Tensor:
        for m in modules:
            x = m(x)
        return x

    def stem_forward(self, x: Tensor) -> Tensor:
        return self._run(self._stem, x)

    def stage_forward(self, i: int, x: Tensor) -> Tensor:
        return self._run(self._stages[i], x)

    def embed(self, last: Tensor) -> Tensor:
        """The pooled penultimate vector from the last stage's output."""
        return self._pool(self._run(self._pre_pool, last))

    def classify(self, embedding: Tensor) -> Tensor:
        return self._run(self._classifier, embedding)

    def head_forward(self, last: Tensor) -> Tensor:
        return self.classify(self.embed(last))

    # ----------------------------------------------------------------- public passes
    def forward(self, x: Tensor) -> Tensor:
        return self.features(x).logits

    def features(self, x: Tensor) -> Features:
        """Every stage output, the embedding and the logits of one forward pass."""
        x = self.stem_forward(x)
        stages = []
        for i in range(self.num_stages):
            x = self.stage_forward(i, x)
            stages.append(x)
        embedding = self.embed(x)
        return Features(stages=stages, embedding=embedding, logits=self.classify(embedding))

    def run_from(self, k: int, feature: Tensor) -> Features:
        """Continue from the output of stage ``k``: run stages ``k+1..N-1`` and the head.

        ``k = -1`` starts right after the stem. The returned ``stages`` hold the outputs of
        stages ``k+1..N-1`` (empty when ``k`` is the last stage).
        """
        if not -1 <= k < self.num_stages:
            raise IndexError(f"stage {k} out of range for a {self.num_stages}-stage network")
        x = feature
        stages = []
        for i in range(k + 1, self.num_stages):
            x = self.stage_forward(i, x)
            stages.append(x)
        embedding = self.embed(x)
        return Features(stages=stages, embedding=embedding, logits=self.classify(embedding))
