"""Train one erasure request and store its sparse adapter, whatever the method.

The method (``forgetting/methods/``) gives the loss; this module gives everything around it,
in three parts: ``setup`` (the request's data, LoRA on every block's FFN, optimiser, schedule),
``train_epoch`` (the steps of one epoch, then the epoch's candidates measured on the
*validation* split, raw and EMA weights) and ``finish`` (the kept candidate: the best val
H-Mean, the sparsest within ``select_tolerance`` of it; groups under the norm threshold
dropped, the rest saved in PEFT's format). The returned model is base + that stored adapter,
so what is evaluated is exactly what is stored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3

from . import methods
from .augment import BatchViews, batch_views
from .config import ForgetConfig
from .data import DataError
from .datasets import request_data
from .evaluate import Metrics, evaluate
from .lora import (
    adapter_bytes,
    add_lora,
    apply_adapter,
    block_of,
    group_norms,
    kept_groups,
    load_lora_state,
    lora_groups,
    lora_state,
    save_sparse_adapter,
    trainable_parameters,
)
from .methods.embedding import EmbeddingForgetting
from .methods.objective import Batch, Objective, Setup, taps
from .model import Classifier, model_bytes
from .pretrain import seeded_loader
from .progress import progress_bar
from .prototypes import Prototypes
from .requests import RequestError
from .runtime import autocast, compiled, to_device


@dataclass
class ForgetResult:
    model: Classifier
    adapter_dir: Path
    adapter_sha256: str
    kept_groups: list[int]
    group_norms: dict[int, float]
    selected_epoch: int
    selected_weights: str  # "raw" or "ema"
    val: Metrics
    val_before: Metrics
    train_seconds: float
    trainable_params: int
    total_params: int
    adapter_bytes: int
    model_bytes: int
    history: list[dict] = field(default_factory=list)
    # what the method recorded of its set-up (FG-OrIU: each subspace's rank per block)
    method_record: dict = field(default_factory=dict)


@dataclass
class Run:
    """One request's training state, from ``setup`` to ``finish``."""

    model: Classifier  # the parent, unchanged
    peft_model: torch.nn.Module
    objective: Objective
    embedding: EmbeddingForgetting | None  # forget.embedding's terms, when on for the method
    opt: torch.optim.Optimizer
    sched: CosineLRScheduler
    batches: Iterator[tuple]  # (retained, forgotten, earlier or None) per step
    steps_per_epoch: int
    val_ds: object
    forget: list[int]
    earlier: list[int]
    missing: list[int]
    val_before: Metrics
    cfg: ForgetConfig
    device: torch.device
    t0: float
    views: BatchViews | None = None  # forget.augment: a random view of each image per step
    ema: ModelEmaV3 | None = None
    step: int = 0
    candidates: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)

    @property
    def base(self) -> Classifier:
        return self.peft_model.get_base_model()

    @property
    def names(self) -> tuple[str, ...]:
        return self.val_ds.info.class_names


def _cycle(loader):
    while True:
        yield from loader


def setup(model: Classifier, train_ds, val_ds, forget: Sequence[int], cfg: ForgetConfig,
          device: torch.device, earlier: Sequence[int] = (), missing: Sequence[int] = (),
          prototypes: Prototypes | None = None, base: Classifier | None = None) -> Run:
    """The request's images, its method's objective, a LoRA copy of ``model`` and its
    optimiser. ``earlier``: classes forgotten by previous requests (left out of training,
    measured as Acc_o); ``missing``: retained classes with no training images (GS-LoRA++'s
    missing-class setting); ``prototypes``: computed by the pipeline beforehand; ``base``:
    the chain's base model when ``model`` is a later version, None when ``model`` is the base
    (read with ``embedding.anchor: base``)."""
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    forget, earlier, missing = sorted(set(forget)), sorted(set(earlier)), sorted(set(missing))
    retained = sorted(set(range(model.num_classes)) - set(forget) - set(earlier) - set(missing))
    if not forget:
        raise RequestError("empty request: name at least one class to forget")
    if not retained:
        raise RequestError("no retained class with training images left")
    method = methods.spec(cfg.method).load()
    data = request_data(train_ds, forget, retained,
                        earlier if method.uses_earlier(cfg) else [], cfg.shots, cfg.seed,
                        cfg.replay)
    if len(data.forget) == 0:
        raise DataError("the forgotten classes have no training images")
    model = model.to(device).eval()
    val_before = evaluate(model, val_ds, forget, earlier, missing, device=device,
                          class_names=train_ds.info.class_names)
    request = Setup(model, data, forget, retained, earlier, missing, cfg, device, prototypes,
                    base.to(device).eval() if base is not None else None)
    objective = method(request)
    embedding = (EmbeddingForgetting(request) if method.embedding_terms and cfg.embedding.active
                 else None)

    # seeded right before the LoRA init, so the draw does not depend on what ran before
    # (whether the prototypes were passed in or computed above, how many evaluations ran)
    torch.manual_seed(cfg.seed)
    peft_model = add_lora(model, cfg.rank, cfg.lora_alpha).to(device)
    if earlier and cfg.later_a_init == "authors":
        init_lora_a(peft_model, math.sqrt(50))
    if cfg.dropout is not None:
        set_dropout(peft_model, cfg.dropout)
    params = [p for g in lora_groups(peft_model).values() for p in g]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # batch sizes shrink to the data in k-shot mode, where a class has only k images
    load_r = seeded_loader(data.retained, cfg.batch_size, cfg.seed, device=device)
    load_f = _cycle(seeded_loader(data.forget, cfg.forget_batch_size, cfg.seed + 1,
                                  device=device))
    load_o = (None if data.earlier is None
              else _cycle(seeded_loader(data.earlier, cfg.earlier_batch_size, cfg.seed + 2,
                                        device=device)))
    steps_per_epoch = max(len(load_r), cfg.min_steps_per_epoch)
    if cfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    sched = CosineLRScheduler(opt, t_initial=cfg.epochs * steps_per_epoch, lr_min=cfg.min_lr,
                              t_in_epochs=False)
    return Run(model, peft_model, objective, embedding, opt, sched,
               _batches(_cycle(load_r), load_f, load_o),
               steps_per_epoch, val_ds, forget, earlier, missing, val_before, cfg, device, t0,
               views=batch_views(cfg.augment, cfg.seed + 3))


def _batches(load_r, load_f, load_o):
    while True:
        earlier = next(load_o) if load_o is not None else None
        yield next(load_r), next(load_f), earlier


def forward(base: Classifier, retained: tuple, forgotten: tuple, earlier: tuple | None,
            alpha: float, device: torch.device, hooked: bool = False,
            views: BatchViews | None = None) -> Batch:
    """One forward of [retained, forgotten, earlier-forgotten] (images, labels) through the
    LoRA model's ``base``, each image as a random view of it with ``views``. The backbone is
    compiled when enabled, except when ``hooked`` (an objective that reads its blocks'
    outputs)."""
    x_f, y_f = forgotten
    earlier = earlier if earlier is not None else (x_f[:0], y_f[:0])
    if views is not None and views.repeats > 1:
        retained, forgotten, earlier = views.repeat(retained, forgotten, earlier)
    (x_r, y_r), (x_f, y_f), (x_o, y_o) = retained, forgotten, earlier
    x = torch.cat([x_r, x_f, x_o])
    x = to_device(views(x) if views is not None else x, device)
    y_r, y_f, y_o = (y.to(device, non_blocking=True) for y in (y_r, y_f, y_o))
    backbone = base.backbone if hooked else compiled(base.backbone)
    with autocast(device), taps(backbone) if hooked else nullcontext() as got:
        feats = backbone(x)
    groups = list(lora_groups(base).values())
    # the losses and the head in float32
    return Batch(x, feats.float(), y_r, y_f, y_o, base.head, groups, alpha, got)


def train_epoch(run: Run, epoch: int) -> dict:
    """The steps of one epoch, then its candidates measured on val; returns its history row."""
    cfg, objective = run.cfg, run.objective
    run.peft_model.train()
    alpha = cfg.alpha if epoch >= cfg.alpha_warmup_epochs else 0.0
    # summed on the device and read once per epoch: no host sync inside the step loop
    sums: dict[str, torch.Tensor] = {}
    for _ in range(run.steps_per_epoch):
        batch = forward(run.base, *next(run.batches), alpha, run.device, objective.taps,
                        run.views)
        terms = objective.terms(batch)
        if run.embedding is not None:
            terms.loss.update(run.embedding.terms(batch))
        loss = terms.total()
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        objective.before_step(run.peft_model)
        run.opt.step()
        objective.after_step(run.peft_model)
        run.step += 1
        run.sched.step_update(run.step)
        if cfg.ema_update == "step":
            run.ema = update_ema(run.ema, run.peft_model, cfg, epoch, run.step)
        for k, v in {"loss": loss, **terms.loss, **terms.watch}.items():
            sums[k] = sums.get(k, torch.zeros((), dtype=torch.float64, device=run.device)) + \
                v.detach()
    if cfg.ema_update == "epoch":
        run.ema = update_ema(run.ema, run.peft_model, cfg, epoch, run.step)
    row = {"epoch": epoch, **{k: float(v) / run.steps_per_epoch for k, v in sums.items()},
           "lr": run.opt.param_groups[0]["lr"], "group_norms": group_norms(run.peft_model)}
    for name, candidate in (("raw", run.peft_model), ("ema", run.ema.module if run.ema else None)):
        if candidate is None:
            continue
        state = _pruned_state(candidate, cfg.group_threshold)  # what would be stored
        m = _evaluate_state(candidate, state, run.val_ds, run.forget, run.earlier, run.missing,
                            run.val_before.acc_f, run.device, run.names)
        row[f"val_{name}"] = {"acc_f": m.acc_f, "acc_r": m.acc_r, "h_mean": m.h_mean}
        # only sparsified epochs compete: before the warm-up ends every group is in use
        if epoch >= cfg.alpha_warmup_epochs or epoch == cfg.epochs - 1:
            run.candidates.append({"h": m.h_mean, "acc_r": m.acc_r, "epoch": epoch,
                                   "weights": name, "state": state,
                                   "groups": len(kept_groups(group_norms_of(state),
                                                             cfg.group_threshold))})
    run.history.append(row)
    return row


def finish(run: Run, adapter_dir: str | Path, adapter_meta: dict | None = None
           ) -> ForgetResult:
    """Store the selected candidate's kept groups; the model is base + that stored adapter."""
    best = select_candidate(run.candidates, run.cfg.select_tolerance)
    load_lora_state(run.peft_model, best["state"])
    norms = group_norms(run.peft_model)
    kept = kept_groups(norms, run.cfg.group_threshold)
    trainable, total = trainable_parameters(run.peft_model)
    sha = save_sparse_adapter(run.peft_model, kept, adapter_dir, adapter_meta)
    final = apply_adapter(run.model, adapter_dir).to(run.device)
    val = evaluate(final, run.val_ds, run.forget, run.earlier, run.missing, run.val_before.acc_f,
                   run.device, run.names)
    return ForgetResult(
        model=final, adapter_dir=Path(adapter_dir), adapter_sha256=sha, kept_groups=kept,
        group_norms=norms, selected_epoch=best["epoch"], selected_weights=best["weights"],
        val=val, val_before=run.val_before, train_seconds=time.perf_counter() - run.t0,
        trainable_params=trainable, total_params=total,
        adapter_bytes=adapter_bytes(adapter_dir), model_bytes=model_bytes(run.model),
        history=run.history, method_record=run.objective.record(),
    )


def forget_classes(
    model: Classifier, train_ds, val_ds, forget: Sequence[int], cfg: ForgetConfig,
    adapter_dir: str | Path, device: torch.device, earlier: Sequence[int] = (),
    missing: Sequence[int] = (), progress: bool = True, adapter_meta: dict | None = None,
    prototypes: Prototypes | None = None, base: Classifier | None = None,
) -> ForgetResult:
    """Forget ``forget`` (class indices) from ``model`` with ``cfg.method``; write the adapter
    to ``adapter_dir`` (see ``setup`` for the other arguments)."""
    run = setup(model, train_ds, val_ds, forget, cfg, device, earlier, missing, prototypes, base)
    bar = progress_bar(cfg.epochs, "forget", enabled=progress)
    for epoch in bar:
        row = train_epoch(run, epoch)
        bar.set_postfix(ce_r=f"{row['ce_r']:.3f}", ce_f=f"{row.get('ce_f', 0.0):.2f}",
                        h=f"{row['val_raw']['h_mean']:.3f}")
    bar.close()
    return finish(run, adapter_dir, adapter_meta)


def update_ema(ema: ModelEmaV3 | None, peft_model, cfg: ForgetConfig, epoch: int, step: int
               ) -> ModelEmaV3 | None:
    """One EMA update (after a step, or after an epoch with ``ema_update: epoch``); the
    first call from ``ema_start_epoch`` on starts the average at the current weights."""
    if cfg.ema_decay is None or epoch < cfg.ema_start_epoch:
        return ema
    if ema is None:
        return ModelEmaV3(peft_model, decay=cfg.ema_decay)
    ema.update(peft_model, step=step)
    return ema


def init_lora_a(peft_model, a: float) -> None:
    """Re-draw every LoRA A from kaiming-uniform with slope ``a`` (the authors use sqrt(50)
    for later tasks; PEFT's default is sqrt(5)); B stays zero, so the model is unchanged."""
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name:
                torch.nn.init.kaiming_uniform_(p, a=a)


def set_dropout(model: torch.nn.Module, p: float) -> None:
    """Every dropout of the (copied) ViT at ``p`` while it forgets; evaluation is in eval mode,
    and the stored model is the original plus the adapter, so nothing of it persists."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p


def _pruned_state(peft_model, threshold: float) -> dict[str, torch.Tensor]:
    """The LoRA weights with the groups under ``threshold`` zeroed, as they would be stored."""
    kept = set(kept_groups(group_norms(peft_model), threshold))
    state = lora_state(peft_model)
    for k, v in state.items():
        if block_of(k) not in kept:
            v.zero_()
    return state


def _evaluate_state(peft_model, state, val_ds, forget, earlier, missing, acc_f_before, device,
                    names) -> Metrics:
    saved = lora_state(peft_model)
    load_lora_state(peft_model, state)
    try:
        return evaluate(peft_model, val_ds, forget, earlier, missing, acc_f_before, device, names)
    finally:
        load_lora_state(peft_model, saved)


def select_candidate(candidates: list[dict], tolerance: float) -> dict:
    """Best val H-Mean; among epochs within ``tolerance`` of it, the fewest groups, then H, acc_r.

    A sparser adapter edits fewer blocks and stores less, which is the point of GS-LoRA; a
    sliver of H-Mean on a small validation split does not justify a denser one.
    """
    top = max(c["h"] for c in candidates)
    near = [c for c in candidates if c["h"] >= top - tolerance]
    return min(near, key=lambda c: (c["groups"], -c["h"], -c["acc_r"]))


def group_norms_of(state: dict[str, torch.Tensor]) -> dict[int, float]:
    sq: dict[int, float] = {}
    for k, v in state.items():
        b = block_of(k)
        if b is not None:
            sq[b] = sq.get(b, 0.0) + float(v.pow(2).sum())
    return {b: s**0.5 for b, s in sorted(sq.items())}
