"""LoRA on every block's FFN through PEFT; one sparsity group per transformer block.

The stored adapter is PEFT's own format (``adapter_config.json`` + ``adapter_model.safetensors``)
but holds only the groups that survived group sparsity; ``apply_adapter`` injects it with
``get_peft_model`` and merges it with ``merge_and_unload``. model_t = merge(model_{t-1}, adapter_t).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from peft.utils import (
    CONFIG_NAME,
    SAFETENSORS_WEIGHTS_NAME,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from safetensors.torch import load_file, save_file

from .files import temp_sibling, write_atomic
from .model import CheckpointError, Classifier, file_sha256

_BLOCK_RE = re.compile(r"backbone\.blocks\.(\d+)\.mlp\.")
FFN_TARGETS = r".*backbone\.blocks\.\d+\.mlp\.fc[12]"


def lora_config(rank: int, alpha: float, blocks: Sequence[int] | None = None) -> LoraConfig:
    """A random / B zero (PEFT's default init), so the wrapped model starts unchanged."""
    targets: str | list[str] = (
        FFN_TARGETS if blocks is None
        else [f"backbone.blocks.{b}.mlp.{fc}" for b in sorted(blocks) for fc in ("fc1", "fc2")]
    )
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets,
                      bias="none", init_lora_weights=True)


def add_lora(model: Classifier, rank: int, alpha: float) -> PeftModel:
    """A frozen copy of ``model`` with fresh LoRA on every fc1/fc2; only LoRA trains."""
    return get_peft_model(copy.deepcopy(model), lora_config(rank, alpha))


def block_of(param_name: str) -> int | None:
    m = _BLOCK_RE.search(param_name)
    return int(m.group(1)) if m and "lora_" in param_name else None


def lora_groups(peft_model: PeftModel) -> dict[int, list[torch.nn.Parameter]]:
    """Block index -> its LoRA weights (fc1.A, fc1.B, fc2.A, fc2.B)."""
    groups: dict[int, list[torch.nn.Parameter]] = {}
    for name, p in peft_model.named_parameters():
        b = block_of(name)
        if b is not None:
            groups.setdefault(b, []).append(p)
    return dict(sorted(groups.items()))


@torch.no_grad()
def group_norms(peft_model: PeftModel) -> dict[int, float]:
    return {b: float(torch.sqrt(sum(p.pow(2).sum() for p in ps))) for b, ps in
            lora_groups(peft_model).items()}


def kept_groups(norms: dict[int, float], threshold: float) -> list[int]:
    """Groups above the threshold; at least the strongest one (an empty adapter forgets nothing)."""
    kept = [b for b, n in norms.items() if n >= threshold]
    return kept or [max(norms, key=norms.get)]


def lora_state(peft_model: PeftModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in peft_model.named_parameters() if "lora_" in k}


def load_lora_state(peft_model: PeftModel, state: dict[str, torch.Tensor]) -> None:
    params = dict(peft_model.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def save_sparse_adapter(peft_model: PeftModel, kept: Sequence[int], out_dir: str | Path,
                        meta: dict | None = None) -> str:
    """Write the kept groups in PEFT's format, atomically (temp dir, then rename).

    Returns the sha256 of the weights file. PEFT's ``save_pretrained`` would write every group,
    so the config and the filtered state dict are written with PEFT's own names and helpers.
    """
    out = Path(out_dir)
    if out.exists():
        raise FileExistsError(f"adapter already exists: {out}")
    rank = peft_model.peft_config["default"].r
    alpha = peft_model.peft_config["default"].lora_alpha
    state = get_peft_model_state_dict(peft_model)
    keep = set(kept)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()
             if _BLOCK_RE.search(k) and int(_BLOCK_RE.search(k).group(1)) in keep}

    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        lora_config(rank, alpha, kept).save_pretrained(str(tmp))
        # PEFT keeps target_modules as a set, written in hash order, which changes from one
        # process to the next: sorted, the same adapter is the same bytes (DVC, checksums)
        cfg_path = tmp / CONFIG_NAME
        cfg = json.loads(cfg_path.read_text())
        if isinstance(cfg.get("target_modules"), list):
            cfg["target_modules"] = sorted(cfg["target_modules"])
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
        save_file(state, tmp / SAFETENSORS_WEIGHTS_NAME, metadata={"format": "pt"})
        if meta is not None:
            (tmp / "forgetting.json").write_text(json.dumps(meta, indent=2, sort_keys=True))

    shutil.rmtree(temp_sibling(out), ignore_errors=True)
    write_atomic(out, write)
    return file_sha256(out / SAFETENSORS_WEIGHTS_NAME)


def adapter_bytes(adapter_dir: str | Path) -> int:
    return (Path(adapter_dir) / SAFETENSORS_WEIGHTS_NAME).stat().st_size


def apply_adapter(model: Classifier, adapter_dir: str | Path,
                  expected_sha256: str | None = None) -> Classifier:
    """merge(model, adapter): a new model with the adapter's LoRA merged into its weights."""
    d = Path(adapter_dir)
    weights = d / SAFETENSORS_WEIGHTS_NAME
    if not (d / CONFIG_NAME).is_file() or not weights.is_file():
        raise CheckpointError(f"adapter not found or incomplete: {d}")
    if expected_sha256 is not None and file_sha256(weights) != expected_sha256:
        raise CheckpointError(f"adapter {d} does not match its recorded sha256")
    try:
        # Built from the local files with PEFT's own pieces rather than
        # PeftModel.from_pretrained, whose hub fallback could try the network.
        config = LoraConfig(**PeftConfig.from_json_file(str(d / CONFIG_NAME)))
        peft_model = get_peft_model(copy.deepcopy(model), config)
        result = set_peft_model_state_dict(peft_model, load_file(weights))
    except Exception as e:  # corrupt safetensors, bad config JSON, shape mismatch
        raise CheckpointError(f"adapter {d} cannot be loaded: {str(e)[:300]}") from e
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise CheckpointError(f"adapter {d} lacks weights for {missing[:3]}")
    merged = peft_model.merge_and_unload()
    merged.eval()
    return merged


def apply_chain(model: Classifier, adapters: Sequence[tuple[str | Path, str | None]]) -> Classifier:
    """Base model + the chain of (adapter_dir, sha256) reproduces every later model version."""
    for d, sha in adapters:
        model = apply_adapter(model, d, sha)
    return model


def trainable_parameters(peft_model: PeftModel) -> tuple[int, int]:
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" not in n)
    return trainable, total
