"""Train one erasure request with GS-LoRA / GS-LoRA++ and store its sparse adapter.

Per step, with a retained batch (x_r, y_r) and a forgotten batch (x_f, y_f):
    L = CE(x_r, y_r) + beta * ReLU(BND - CE(x_f, y_f)) + alpha * sum_g ||theta_g||_2 (+ L_pro)
plus, when earlier requests' classes still have images (not purged), a batch (x_o, y_o) of them
under a bounded term of its own, beta_earlier * ReLU(BND_o - CE(x_o, y_o)): it is zero while
they stay forgotten and pushes back only if this request's LoRA starts to revive them.
Method ``fg-oriu`` adds FG-OrIU's feature terms and gradient projection (forgetting/fg_oriu.py).
The epoch kept is the one with the best H-Mean on the *validation* split (raw or EMA weights,
whichever is better, recorded); groups under the norm threshold are then dropped, the rest
saved in PEFT's format, and the returned model is base + that stored adapter, so what is
evaluated is exactly what is stored.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3

from .config import ForgetConfig
from .data import DataError
from .datasets import request_data
from .evaluate import Metrics, evaluate
from .fg_oriu import (
    Subspaces,
    forward_losses,
    lora_a_weights,
    project_gradients,
    project_step,
    subspaces,
    taps,
)
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
from .losses import bounded_forget_loss, group_sparse_loss, prototype_loss
from .model import Classifier, model_bytes
from .pretrain import seeded_loader
from .progress import progress_bar
from .prototypes import Prototypes, request_prototypes
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
    # fg-oriu: each subspace's rank per block (forgetting/fg_oriu.py)
    subspace_dims: dict[str, list[int]] | None = None


def _cycle(loader):
    while True:
        yield from loader


def step_losses(base: Classifier, backbone: torch.nn.Module, groups, retained: tuple,
                forgotten: tuple, earlier: tuple | None, protos: Prototypes | None,
                cfg: ForgetConfig, alpha: float, w_f: float, device: torch.device,
                sub: Subspaces | None = None) -> dict[str, torch.Tensor]:
    """The GS-LoRA(++) objective on one batch of (images, labels) per kind (method.md):
    retained CE + bounded forget loss + group sparsity (+ earlier-forgotten, + prototypes,
    + FG-OrIU's feature terms with ``sub``). ``backbone``: ``base.backbone``, possibly
    compiled (not with ``sub``: its hooks need the eager module)."""
    (x_r, y_r), (x_f, y_f) = retained, forgotten
    x_o, y_o = earlier if earlier is not None else (x_f[:0], y_f[:0])
    x = to_device(torch.cat([x_r, x_f, x_o]), device)
    y_r, y_f, y_o = (y.to(device, non_blocking=True) for y in (y_r, y_f, y_o))
    with autocast(device), taps(backbone) if sub is not None else nullcontext() as got:
        feats = backbone(x)
    feats = feats.float()  # the losses and the head in float32
    n_r, n_f = len(y_r), len(y_r) + len(y_f)
    f_r, f_f, f_o = feats[:n_r], feats[n_r:n_f], feats[n_f:]
    # with a margin head, the forgotten CE with its margin (authors) or without (ours)
    logits_r, logits_f = base.head(f_r, y_r), base.head(f_f, y_f if cfg.forget_margin else None)
    ce_r = F.cross_entropy(logits_r, y_r)
    ce_f = F.cross_entropy(logits_f, y_f)
    structure = group_sparse_loss(groups)
    loss = ce_r + cfg.beta * bounded_forget_loss(ce_f, cfg.bound) + alpha * structure
    ce_o = torch.zeros((), device=device)
    if len(y_o):
        ce_o = F.cross_entropy(base.head(f_o), y_o)
        loss = loss + cfg.beta_earlier * bounded_forget_loss(ce_o, cfg.bound_earlier)
    pro = torch.zeros((), device=device)
    if protos is not None:
        kl_direction = (cfg.prototypes.kl_direction if cfg.shots is None
                        else cfg.prototypes.kl_direction_fewshot)
        v_r, v_f = (f_r, f_f) if protos.source == "embedding" else (logits_r, logits_f)
        pro = prototype_loss(v_f, protos.vectors[y_f], v_r, protos.vectors[y_r],
                             w_f, cfg.prototypes.w_r, cfg.prototypes.bound,
                             kl_direction)
        loss = loss + pro
    orth = torch.zeros((), device=device)
    if sub is not None:
        lf, lr = forward_losses(got["out"], n_r, n_f, sub)
        orth = cfg.fg_oriu.w_forget * lf + cfg.fg_oriu.w_retain * lr
        loss = loss + orth
    return {"loss": loss, "ce_r": ce_r, "ce_f": ce_f, "ce_o": ce_o, "structure": structure,
            "pro": pro, "orth": orth}


def forget_classes(
    model: Classifier, train_ds, val_ds, forget: Sequence[int], cfg: ForgetConfig,
    adapter_dir: str | Path, device: torch.device, earlier: Sequence[int] = (),
    missing: Sequence[int] = (), progress: bool = True, adapter_meta: dict | None = None,
    prototypes: Prototypes | None = None,
) -> ForgetResult:
    """Forget ``forget`` (class indices) from ``model``; write the adapter to ``adapter_dir``.

    ``earlier``: classes forgotten by previous requests (left out of training, measured as
    Acc_o). ``prototypes``: precomputed by the current model (else computed here).
    ``missing``: retained classes with no training images (GS-LoRA++'s missing-class
    setting): they get no gradient and no prototype, and are measured separately.
    """
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    forget, earlier, missing = sorted(set(forget)), sorted(set(earlier)), sorted(set(missing))
    retained = sorted(set(range(model.num_classes)) - set(forget) - set(earlier) - set(missing))
    if not forget:
        raise RequestError("empty request: name at least one class to forget")
    if not retained:
        raise RequestError("no retained class with training images left")
    data = request_data(train_ds, forget, retained, earlier if cfg.beta_earlier else [],
                        cfg.shots, cfg.seed)
    train_f, train_r, train_o = data.forget, data.retained, data.earlier
    if len(train_f) == 0:
        raise DataError("the forgotten classes have no training images")
    model = model.to(device).eval()
    names = train_ds.info.class_names
    val_before = evaluate(model, val_ds, forget, earlier, missing, device=device, class_names=names)

    protos: Prototypes | None = prototypes.to(device) if prototypes is not None else None
    w_f = cfg.prototypes.w_f if cfg.shots is None else cfg.prototypes.w_f_fewshot
    if cfg.prototypes.enabled and protos is None:
        # from the images available to this request only (k-shot, missing classes)
        protos = request_prototypes(model, train_f, train_r, model.num_classes, device,
                                    cfg.prototypes, cfg.shots is not None, cfg.seed).to(device)

    sub: Subspaces | None = None
    if cfg.fg_oriu.enabled:
        sub = subspaces(model, train_f, train_r, train_o, cfg.fg_oriu.energy,
                        cfg.fg_oriu.max_images, device, cfg.seed).to(device)

    # seeded right before the LoRA init, so the draw does not depend on what ran before
    # (whether the prototypes were passed in or computed above, how many evaluations ran)
    torch.manual_seed(cfg.seed)
    peft_model = add_lora(model, cfg.rank, cfg.lora_alpha).to(device)
    if earlier and cfg.later_a_init == "authors":
        init_lora_a(peft_model, math.sqrt(50))
    if cfg.dropout is not None:
        set_dropout(peft_model, cfg.dropout)
    base = peft_model.get_base_model()
    groups = list(lora_groups(peft_model).values())
    params = [p for g in groups for p in g]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # batch sizes shrink to the data in k-shot mode, where a class has only k images
    load_r = seeded_loader(train_r, cfg.batch_size, cfg.seed, device=device)
    load_f = _cycle(seeded_loader(train_f, cfg.forget_batch_size, cfg.seed + 1, device=device))
    load_o = (None if train_o is None
              else _cycle(seeded_loader(train_o, cfg.earlier_batch_size, cfg.seed + 2,
                                        device=device)))
    backbone = base.backbone if sub is not None else compiled(base.backbone)
    steps_per_epoch = max(len(load_r), cfg.min_steps_per_epoch)
    if cfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    load_r = _cycle(load_r)
    steps = cfg.epochs * steps_per_epoch
    sched = CosineLRScheduler(opt, t_initial=steps, lr_min=cfg.min_lr, t_in_epochs=False)
    ema: ModelEmaV3 | None = None
    candidates: list[dict] = []
    history: list[dict] = []
    step = 0
    bar = progress_bar(cfg.epochs, "forget", enabled=progress)
    for epoch in bar:
        peft_model.train()
        alpha = cfg.alpha if epoch >= cfg.alpha_warmup_epochs else 0.0
        # summed on the device and read once per epoch: no host sync inside the step loop
        sums = {k: torch.zeros((), dtype=torch.float64, device=device)
                for k in ("loss", "ce_r", "ce_f", "ce_o", "structure", "pro", "orth")}
        for _ in range(steps_per_epoch):
            earlier_batch = next(load_o) if load_o is not None else None
            losses = step_losses(base, backbone, groups, next(load_r), next(load_f), earlier_batch,
                                 protos, cfg, alpha, w_f, device, sub)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            project = sub is not None and cfg.fg_oriu.project_gradients
            if project:
                project_gradients(peft_model, sub)
                before = lora_a_weights(peft_model)
            opt.step()
            if project:
                project_step(peft_model, before, sub)
            step += 1
            sched.step_update(step)
            if cfg.ema_update == "step":
                ema = update_ema(ema, peft_model, cfg, epoch, step)
            for k in sums:
                sums[k] += losses[k].detach()
        if cfg.ema_update == "epoch":
            ema = update_ema(ema, peft_model, cfg, epoch, step)
        row = {"epoch": epoch, **{k: float(v) / steps_per_epoch for k, v in sums.items()},
               "lr": opt.param_groups[0]["lr"],
               "group_norms": group_norms(peft_model)}
        for name, candidate in (("raw", peft_model), ("ema", ema.module if ema else None)):
            if candidate is None:
                continue
            state = _pruned_state(candidate, cfg.group_threshold)  # what would be stored
            m = _evaluate_state(candidate, state, val_ds, forget, earlier, missing,
                                val_before.acc_f, device, names)
            row[f"val_{name}"] = {"acc_f": m.acc_f, "acc_r": m.acc_r, "h_mean": m.h_mean}
            # only sparsified epochs compete: before the warm-up ends every group is in use
            if epoch >= cfg.alpha_warmup_epochs or epoch == cfg.epochs - 1:
                candidates.append({"h": m.h_mean, "acc_r": m.acc_r, "epoch": epoch,
                                   "weights": name, "state": state,
                                   "groups": len(kept_groups(group_norms_of(state),
                                                             cfg.group_threshold))})
        history.append(row)
        bar.set_postfix(ce_r=f"{row['ce_r']:.3f}", ce_f=f"{row['ce_f']:.2f}",
                        h=f"{row['val_raw']['h_mean']:.3f}")
    bar.close()

    best = select_candidate(candidates, cfg.select_tolerance)
    load_lora_state(peft_model, best["state"])
    norms = group_norms(peft_model)
    kept = kept_groups(norms, cfg.group_threshold)
    trainable, total = trainable_parameters(peft_model)
    sha = save_sparse_adapter(peft_model, kept, adapter_dir, adapter_meta)
    final = apply_adapter(model, adapter_dir).to(device)
    val = evaluate(final, val_ds, forget, earlier, missing, val_before.acc_f, device, names)
    return ForgetResult(
        model=final, adapter_dir=Path(adapter_dir), adapter_sha256=sha, kept_groups=kept,
        group_norms=norms, selected_epoch=best["epoch"], selected_weights=best["weights"], val=val,
        val_before=val_before, train_seconds=time.perf_counter() - t0,
        trainable_params=trainable, total_params=total,
        adapter_bytes=adapter_bytes(adapter_dir), model_bytes=model_bytes(model),
        history=history, subspace_dims=sub.dims() if sub is not None else None,
    )


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
