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

Dense-prediction networks use two optional extensions (classification views use neither):

- ``aux=(stage, names)``: an auxiliary head (PSPNet's and DeepLab's FCN head on layer3) that
  reads stage ``stage``'s output; in training mode :meth:`Staged.features` puts its output in
  ``Features.extras["aux"]``. :meth:`Staged.run_from` does not compute it.
- ``decoder=Decoder(...)``: a head that is not a chain of modules on the last stage, e.g.
  LRASPP's, which also reads an earlier ("skip") stage. Its functions take the plain network
  as first argument (never a closure over its modules, so that ``copy.deepcopy`` of the view
  stays consistent).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from kdlab.errors import UserError


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


def no_pool(x: Tensor) -> Tensor:
    """The pool of dense-prediction views: the decoder's feature map is the embedding."""
    return x


@dataclass(frozen=True)
class Decoder:
    """A head that reads stage outputs besides the last one, or that is not a chain.

    ``skips``: indices of the earlier stages it reads; ``embed(net, last, skip_outputs)``
    returns the (pre-pool) embedding from the last stage's output and those stages' outputs
    (in ``skips`` order); ``classify(net, embedding)`` returns the logits, ``None`` to run the
    view's ``classifier`` modules in order. With a decoder, the view's ``pre_pool`` (and, when
    ``classify`` is given, ``classifier``) names only list the modules these functions use
    (for :meth:`Staged.head_modules`); they are not run in order.
    """

    skips: tuple[int, ...]
    embed: Callable[[nn.Module, Tensor, list[Tensor]], Tensor]
    classify: Callable[[nn.Module, Tensor], Tensor] | None = None


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
        aux: ``(stage index, dotted names)`` of an auxiliary head run (in training mode
            only) on that stage's output into ``Features.extras["aux"]``.
        decoder: a :class:`Decoder` for heads that read earlier stages too.

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
        aux: tuple[int, Sequence[str]] | None = None,
        decoder: Decoder | None = None,
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
        self.pre_pool_names = list(pre_pool)
        self._pool = pool
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self._info: list[StageInfo] | None = None
        self._embedding_dim: int | None = None
        self.aux_stage: int | None = None
        self._aux: list[nn.Module] = []
        if aux is not None:
            self.aux_stage, aux_names = aux
            if not 0 <= self.aux_stage < len(stages):
                raise ValueError(f"aux stage {self.aux_stage} out of range")
            self._aux = [net.get_submodule(n) for n in aux_names]
        self.decoder = decoder
        if decoder is not None and not all(0 <= i < len(stages) - 1 for i in decoder.skips):
            raise ValueError(f"decoder skips {decoder.skips} must be stages before the last")

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

    def aux_modules(self) -> nn.ModuleList:
        """The auxiliary head's modules (empty without one)."""
        return nn.ModuleList(self._aux)

    @property
    def skips(self) -> tuple[int, ...]:
        """The earlier stages the head reads besides the last one (a decoder's skips)."""
        return self.decoder.skips if self.decoder is not None else ()

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

    def embed(self, last: Tensor, skips: Sequence[Tensor] = ()) -> Tensor:
        """The pooled penultimate vector (a dense view's decoder map) from the last stage's
        output, and the outputs of the stages in :attr:`skips` when the head reads any."""
        if len(skips) != len(self.skips):
            raise ValueError(f"the head reads the outputs of stages {self.skips}; "
                             f"got {len(skips)} skip tensor(s)")
        if self.decoder is not None:
            return self._pool(self.decoder.embed(self.net, last, list(skips)))
        return self._pool(self._run(self._pre_pool, last))

    def classify(self, embedding: Tensor) -> Tensor:
        if self.decoder is not None and self.decoder.classify is not None:
            return self.decoder.classify(self.net, embedding)
        return self._run(self._classifier, embedding)

    def head_forward(self, last: Tensor, skips: Sequence[Tensor] = ()) -> Tensor:
        return self.classify(self.embed(last, skips))

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
        embedding = self.embed(x, [stages[i] for i in self.skips])
        extras = {}
        if self._aux and self.training:
            assert self.aux_stage is not None
            extras["aux"] = self._run(self._aux, stages[self.aux_stage])
        return Features(stages=stages, embedding=embedding, logits=self.classify(embedding),
                        extras=extras)

    def run_from(
        self, k: int, feature: Tensor, *, earlier: Mapping[int, Tensor] | None = None
    ) -> Features:
        """Continue from the output of stage ``k``: run stages ``k+1..N-1`` and the head.

        ``k = -1`` starts right after the stem. The returned ``stages`` hold the outputs of
        stages ``k+1..N-1`` (empty when ``k`` is the last stage). A head that reads an earlier
        stage ``s`` (:attr:`skips`) takes its output from this pass when ``k <= s`` and from
        ``earlier[s]`` when ``k > s`` (a clear error without it). The auxiliary head is not
        run.
        """
        if not -1 <= k < self.num_stages:
            raise IndexError(f"stage {k} out of range for a {self.num_stages}-stage network")
        known = dict(earlier or {})
        known[k] = feature
        x = feature
        stages = []
        for i in range(k + 1, self.num_stages):
            x = self.stage_forward(i, x)
            stages.append(x)
            known[i] = x
        missing = [s for s in self.skips if s not in known]
        if missing:
            raise UserError(
                f"This network's head also reads stage {missing[0]}, so continuing from stage "
                f"{k} needs that stage's output: start from a stage at or before {missing[0]} "
                f"or pass earlier={{{missing[0]}: feature}}."
            )
        embedding = self.embed(x, [known[s] for s in self.skips])
        return Features(stages=stages, embedding=embedding, logits=self.classify(embedding))

    def run_from_many(self, starts: Sequence[int], features: Sequence[Tensor]) -> list[Features]:
        """:meth:`run_from` for several ``(starts[j], features[j])`` in one batched pass.

        Every stage runs once, on the concatenation along the batch of the inputs that have
        reached it: a pass that starts later joins at the end of the batch. The inputs must
        have the same batch size ``b``, which is the chunk a batch-coupled layer must treat
        separately (see :func:`kdlab.nn.chunked_bn.chunked_batchnorm`): chunk ``j`` of every
        stage's batch belongs to the ``j``-th pass in the order of ``sorted(starts)``
        (stable). Returns one :class:`Features` per pass, in the order given, whose tensors
        are views of the batched results. Not for heads that read earlier stages.
        """
        if len(starts) != len(features) or not starts:
            raise ValueError("run_from_many needs one feature per start, and at least one")
        if self.skips:
            raise ValueError("run_from_many cannot feed a head that reads earlier stages; "
                             "use run_from per pass")
        b = features[0].shape[0]
        if any(f.shape[0] != b for f in features):
            raise ValueError("run_from_many needs inputs of the same batch size")
        for k in starts:
            if not -1 <= k < self.num_stages:
                raise IndexError(f"stage {k} out of range for a {self.num_stages}-stage network")
        order = sorted(range(len(starts)), key=lambda j: starts[j])
        stages: dict[int, list[Tensor]] = {j: [] for j in order}
        members: list[int] = []
        x: Tensor | None = None

        def join(before: int) -> Tensor | None:
            new = [j for j in order if starts[j] == before - 1]
            if not new:
                return x
            members.extend(new)
            return torch.cat(([] if x is None else [x]) + [features[j] for j in new])

        for i in range(min(starts) + 1, self.num_stages):
            x = join(i)
            assert x is not None  # the earliest start joins at the first stage run
            x = self.stage_forward(i, x)
            for j, part in zip(members, x.split(b), strict=True):  # one backward node
                stages[j].append(part)
        x = join(self.num_stages)
        assert x is not None
        embedding = self.embed(x)
        logits = self.classify(embedding)
        out = {j: Features(stages=stages[j], embedding=e, logits=z)
               for j, e, z in zip(members, embedding.split(b), logits.split(b), strict=True)}
        return [out[j] for j in range(len(starts))]
