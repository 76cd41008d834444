"""``forget``: run GS-LoRA(++) erasure requests on a timm ViT."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
import typer.core


class _InOrder(typer.core.TyperGroup):
    """Commands listed in the order a user meets them (typer puts sub-groups last)."""

    ORDER = ("demo", "init", "ingest", "pretrain", "request", "run", "status", "report",
             "promote", "rollback", "purge", "serve", "stack", "worker", "repro",
             "library-demo")

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: self.ORDER.index(n) if n in self.ORDER else 99)


# click's own help formatting: flags as flags, paragraphs rewrapped to the terminal
app = typer.Typer(cls=_InOrder, add_completion=False, no_args_is_help=True,
                  rich_markup_mode=None,
                  help="Erase classes from a pre-trained vision transformer, one request after "
                       "another (GS-LoRA, GS-LoRA++, FG-OrIU), with Prefect, MLflow and DVC.")


@app.callback()
def _main(verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="tracebacks and Prefect's error logs on failures")] = False
          ) -> None:
    """Erase classes from a pre-trained ViT, one request after another."""
    from . import console

    console.setup(verbose)


def library_demo(
    workdir: Annotated[Path, typer.Option(help="where the demo writes its files")] = Path(
        ".forgetting/library-demo"),
    config: Annotated[Path | None, typer.Option(help="YAML config (params.yaml)")] = None,
    device: str = "auto",
) -> None:
    """The library alone (no Prefect, MLflow or DVC): digits, pretrain, the config's requests."""
    from forgetting.config import load_config
    from forgetting.data import import_sklearn_digits
    from forgetting.datasets import splits
    from forgetting.evaluate import evaluate
    from forgetting.model import save_checkpoint
    from forgetting.pretrain import pretrain
    from forgetting.runtime import setup_runtime
    from forgetting.train import forget_classes

    cfg = load_config(config)
    dev = setup_runtime(cfg.model_copy(update={"device": device}) if device != "auto" else cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "digits.parquet"
    info = import_sklearn_digits(data, cfg.data.image_size, seed=cfg.data.seed)
    sp = splits(data, cfg.model)
    typer.echo(f"dataset {data}: {info.num_rows} images, {info.num_classes} classes")
    res = pretrain(cfg.model, info.num_classes, sp["train"], sp["val"], cfg.pretrain, dev)
    save_checkpoint(res.model, workdir / "base.safetensors", info.class_names)
    typer.echo(f"pretrained in {res.seconds:.0f}s, val accuracy {res.val_acc:.3f}")
    model, earlier = res.model, []
    rows = []
    adapters = Path(tempfile.mkdtemp(prefix="adapters-", dir=workdir))  # new: deletes nothing
    for i, r in enumerate(cfg.requests, 1):
        classes, shots = r.classes, r.shots
        idx = [info.class_index(c) for c in classes]
        out = adapters / f"adapter-{i}"
        before = evaluate(model, sp["test"], idx, earlier, device=dev, class_names=info.class_names)
        fr = forget_classes(model, sp["train"], sp["val"], idx,
                            cfg.forget.for_request(shots, r.method, i - 1), out, dev,
                            earlier=earlier)
        m = evaluate(fr.model, sp["test"], idx, earlier, acc_f_before=before.acc_f, device=dev,
                     class_names=info.class_names)
        rows.append((i, ",".join(classes), shots or "all", m, fr))
        model, earlier = fr.model, earlier + idx
    typer.echo(f"\n{'req':<4}{'classes':<18}{'shots':>6}{'Acc_f':>8}{'Acc_r':>8}{'Acc_o':>8}"
               f"{'H':>8}{'groups':>8}{'adapter':>10}{'sec':>6}")
    for i, cl, shots, m, fr in rows:
        acc_o = "-" if m.acc_o is None else f"{m.acc_o:.3f}"
        typer.echo(f"{i:<4}{cl:<18}{shots!s:>6}{m.acc_f:8.3f}{m.acc_r:8.3f}{acc_o:>8}"
                   f"{m.h_mean:8.3f}{len(fr.kept_groups):>5}/{cfg.model.depth}"
                   f"{fr.adapter_bytes / 1024:8.1f}KB{fr.train_seconds:6.0f}")


from .pipeline import register_commands, short  # noqa: E402
from .team_commands import register as register_team_commands  # noqa: E402

# in the order a user meets them: set up, request, process, look, manage, share, internals
register_commands(app)
register_team_commands(app)
app.command("library-demo", short_help=short(library_demo))(library_demo)

if __name__ == "__main__":
    app()
