"""A model written by plain timm comes in as it is: keys, shapes, head order, preprocessing."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

from forgetting.config import ModelConfig, TrainConfig
from forgetting.model import CheckpointError
from forgetting.preprocess import data_config, eval_transform, train_transform
from forgetting.timm_checkpoint import import_timm, read_class_names

from .conftest import TINY, write_params
from .helpers import cli

NAMES = ["a", "b", "c", "d", "e"]


def _plain_timm(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    args = dict(num_classes=5, img_size=32, patch_size=8, depth=2)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**args, **kw}).eval()


def _save(model: torch.nn.Module, path, how: str) -> None:
    state = model.state_dict()
    if how == "safetensors":
        save_file(state, path)
    elif how == "torch.save":
        torch.save(state, path)
    else:  # what timm's train.py writes: args as an argparse.Namespace, arch by name
        args = argparse.Namespace(lr=0.1, model="vit_tiny_patch16_224", gp=None,
                                  model_kwargs={"img_size": 32, "patch_size": 8, "depth": 2})
        torch.save({"epoch": 9, "arch": "vit_tiny_patch16_224", "state_dict": state,
                    "args": args}, path)


@pytest.mark.parametrize("how", ["safetensors", "torch.save", "train.py"])
def test_a_plain_timm_checkpoint_imports_with_its_own_architecture(tmp_path, how):
    timm_model = _plain_timm()
    path = tmp_path / ("m.safetensors" if how == "safetensors" else "m.pth")
    _save(timm_model, path, how)
    arch = None if how == "train.py" else "vit_tiny_patch16_224"  # train.py names its arch
    # the weights do not tell the heads: train.py's args build the arch's own 3
    heads = None if how == "train.py" else 3
    model, report = import_timm(path, NAMES, arch, num_heads=heads)
    assert report.settings["num_heads"]["source"] == (
        "vit_tiny_patch16_224's own, as train.py args builds it" if how == "train.py"
        else "--num-heads")
    assert report.check["agree"] and report.check["compared"] == "logits"
    cfg = model.cfg
    assert (cfg.depth, cfg.embed_dim, cfg.num_heads, cfg.patch_size, cfg.image_size,
            cfg.in_chans, cfg.head) == (2, 192, 3, 8, 32, 3, "linear")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), timm_model(x), atol=1e-5)


def _narrow() -> torch.nn.Module:
    """A timm ViT trained outside the project at a width its arch does not have: 96 wide,
    3 heads (vit_tiny is 192 wide), 28 px grey images."""
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5,
                             img_size=28, patch_size=4, in_chans=1, depth=4, embed_dim=96,
                             num_heads=3).eval()


TIMM_CONFIG = {"architecture": "vit_tiny_patch16_224", "num_classes": 5,
               "model_args": {"img_size": 28, "patch_size": 4, "in_chans": 1, "depth": 4,
                              "embed_dim": 96, "num_heads": 3},
               "pretrained_cfg": {"mean": [0.286], "std": [0.353], "interpolation": "bilinear",
                                  "crop_pct": 1.0}}
HF_CONFIG = {"model_type": "vit", "hidden_size": 96, "num_hidden_layers": 4,
             "num_attention_heads": 3, "intermediate_size": 384, "image_size": 28,
             "patch_size": 4, "num_channels": 1, "qkv_bias": True, "hidden_act": "gelu",
             "id2label": {str(i): n for i, n in enumerate(NAMES)}}


def test_heads_the_weights_do_not_tell_come_from_a_file_or_a_flag_never_a_guess(tmp_path):
    timm_model = _narrow()
    path = tmp_path / "model.safetensors"
    save_file(timm_model.state_dict(), path)
    with pytest.raises(CheckpointError, match="attention heads.*pass --num-heads"):
        import_timm(path, NAMES, "vit_tiny_patch16_224")
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        want = timm_model(x)
    model, report = import_timm(path, NAMES, "vit_tiny_patch16_224", num_heads=3)
    assert report.settings["num_heads"] == {"value": 3, "source": "--num-heads"}
    assert "no file states it" in report.settings["global_pool"]["source"]
    assert report.preprocessing["mean"]["source"].endswith("timm pretrained_cfg")
    for layout, name in ((TIMM_CONFIG, "config.json"), (HF_CONFIG, "model.json")):
        (tmp_path / "config.json").unlink(missing_ok=True)
        (tmp_path / "model.json").unlink(missing_ok=True)
        (tmp_path / name).write_text(json.dumps(layout))
        # Hugging Face's layout does not name a timm arch: --arch does
        arch = "vit_tiny_patch16_224" if layout is HF_CONFIG else None
        model, report = import_timm(path, NAMES, arch)
        assert model.cfg.num_heads == 3 and report.settings["num_heads"]["source"] == name
        with torch.no_grad():
            assert torch.allclose(model(x), want, atol=1e-5)
    # timm's layout carries the preprocessing the model was trained with
    (tmp_path / "model.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps(TIMM_CONFIG))
    model, report = import_timm(path, NAMES)
    assert report.preprocessing["mean"] == {"value": [0.286], "source": "config.json"}
    assert model.cfg.interpolation == "bilinear" and model.cfg.crop_pct == 1.0


def test_the_outputs_check_refuses_a_flag_that_changes_the_model_against_its_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(_narrow().state_dict(), path)
    (tmp_path / "config.json").write_text(json.dumps(TIMM_CONFIG))
    _, report = import_timm(path, NAMES, global_pool="token")  # as the file says: fine
    assert report.check["agree"] and report.check["reference"] == "config.json"
    with pytest.raises(CheckpointError, match="global_pool as passed differs from config.json"):
        import_timm(path, NAMES, global_pool="avg")
    with pytest.raises(CheckpointError, match="not an argument of timm's VisionTransformer"):
        import_timm(path, NAMES, model_args={"heads": 3})
    (tmp_path / "config.json").write_text(json.dumps(
        {**TIMM_CONFIG, "model_args": {**TIMM_CONFIG["model_args"], "depth": 6}}))
    with pytest.raises(CheckpointError, match="config.json says depth 6, the weights 4"):
        import_timm(path, NAMES)


def test_head_rows_are_put_in_the_dataset_order_and_classes_must_match(tmp_path):
    timm_model = _plain_timm()
    save_file(timm_model.state_dict(), tmp_path / "m.safetensors")
    (tmp_path / "classes.txt").write_text("e\nd\nc\nb\na\n")
    order = read_class_names(tmp_path / "classes.txt")
    model, _ = import_timm(tmp_path / "m.safetensors", NAMES, "vit_tiny_patch16_224", order,
                           num_heads=3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), timm_model(x).flip(-1), atol=1e-5)
    with pytest.raises(CheckpointError, match=r"only in the checkpoint \['z'\]"):
        import_timm(tmp_path / "m.safetensors", NAMES, "vit_tiny_patch16_224",
                    ["z", "d", "c", "b", "a"], num_heads=3)
    with pytest.raises(CheckpointError, match="5 head rows but 4 class names in the dataset"):
        import_timm(tmp_path / "m.safetensors", NAMES[:4], "vit_tiny_patch16_224", num_heads=3)


def test_never_seen_reference_classes_get_new_head_rows_and_a_head_that_has_them_is_refused(
        tmp_path):
    timm_model = _plain_timm()  # five rows: a..e
    save_file(timm_model.state_dict(), tmp_path / "m.safetensors")
    names = ["a", "b", "x", "c", "d", "e"]  # x: a class this model never saw
    model, _ = import_timm(tmp_path / "m.safetensors", names, "vit_tiny_patch16_224",
                           num_heads=3, never_seen=["x"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got, want = model(x), timm_model(x)
    assert torch.allclose(got[:, [0, 1, 3, 4, 5]], want, atol=1e-5)
    assert model.head.weight[2].abs().sum() == 0 and model.head.bias[2] == want.new_tensor(
        timm_model.head.bias.min().item())
    with pytest.raises(CheckpointError, match="has head rows for a, set aside as the never-seen"):
        import_timm(tmp_path / "m.safetensors", NAMES, "vit_tiny_patch16_224", num_heads=3,
                    never_seen=["a"])


def test_a_checkpoint_that_does_not_fit_names_the_keys_and_shapes(tmp_path):
    state = _plain_timm().state_dict()
    state.pop("blocks.1.mlp.fc2.bias")
    state["norm.weight"] = torch.ones(7)
    state["dist_token"] = torch.zeros(1, 1, 192)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError) as e:
        import_timm(tmp_path / "bad.safetensors", NAMES, "vit_tiny_patch16_224", num_heads=3)
    msg = str(e.value)
    assert "missing: backbone.blocks.1.mlp.fc2.bias" in msg
    assert "unexpected: backbone.dist_token" in msg
    assert "backbone.norm.weight (7,) vs (192,)" in msg
    with pytest.raises(CheckpointError, match="does not name its architecture; pass --arch"):
        import_timm(tmp_path / "bad.safetensors", NAMES)
    with pytest.raises(CheckpointError, match="not a timm ViT"):
        import_timm(tmp_path / "bad.safetensors", NAMES, "resnet50")
    save_file({"fc.weight": torch.zeros(5, 4)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="no backbone.patch_embed.proj.weight"):
        import_timm(tmp_path / "other.safetensors", NAMES, "vit_tiny_patch16_224")


def test_a_bias_free_face_head_becomes_a_margin_head(tmp_path):
    """The face variant: a ViT whose classifier is a cosine (CosFace / ArcFace) weight."""
    timm_model = _plain_timm(in_chans=3)
    state = timm_model.state_dict()
    state.pop("head.bias")
    save_file(state, tmp_path / "face.safetensors")
    model, report = import_timm(tmp_path / "face.safetensors", NAMES, "vit_tiny_patch16_224",
                                margin="arcface", num_heads=3)
    assert model.cfg.head == "arcface" and report.check["compared"].startswith("embeddings")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = torch.nn.functional.normalize(timm_model.forward_head(
            timm_model.forward_features(x), pre_logits=True), dim=-1)
        w = torch.nn.functional.normalize(state["head.weight"], dim=-1)
        assert torch.allclose(model(x), model.cfg.head_scale * feats @ w.T, atol=1e-4)


def test_the_transform_comes_from_the_model_data_config():
    """ImageNet statistics for a DeiT, 0.5 for an augreg ViT; resize + crop by crop_pct when
    the stored images are not at the model's size."""
    deit = ModelConfig(arch="deit_small_patch16_224", image_size=224, patch_size=16, in_chans=3,
                       embed_dim=384, num_heads=6)
    dc = data_config(deit)
    assert dc["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert dc["crop_pct"] == 0.875 or dc["crop_pct"] == 0.9
    white = torch.full((3, 256, 256), 255, dtype=torch.uint8)
    out = eval_transform(deit, 256)(white)
    assert out.shape == (3, 224, 224)
    expect = (1 - torch.tensor(dc["mean"])) / torch.tensor(dc["std"])
    assert torch.allclose(out[:, 100, 100], expect, atol=1e-4)
    text = repr(eval_transform(deit, 256))
    assert "Resize(size=" in text and "CenterCrop(size=(224, 224))" in text
    digits = ModelConfig()  # vit_tiny's own 0.5 statistics, one grey channel, stored at size
    grey = torch.full((1, 16, 16), 255, dtype=torch.uint8)
    assert repr(eval_transform(digits, 16)).count("Resize") == 0
    assert torch.allclose(eval_transform(digits, 16)(grey), torch.ones(1, 16, 16))
    assert eval_transform(digits, 32)(torch.zeros(1, 32, 32, dtype=torch.uint8)).shape == (
        1, 16, 16)
    # pretraining: timm's training transform when asked, the eval transform otherwise
    aug = TrainConfig(augment=True, hflip=1.0, scale_min=0.5)
    text = repr(train_transform(deit, aug, 256))
    assert "RandomResizedCrop" in text and "RandomHorizontalFlip(p=1.0)" in text
    ramp = torch.arange(256, dtype=torch.uint8).repeat(3, 256, 1)  # dark left, bright right
    flipped = train_transform(deit, aug, 256)(ramp)
    assert flipped.shape == (3, 224, 224) and flipped[0, :, 0].mean() > flipped[0, :, -1].mean()
    assert repr(train_transform(digits, TrainConfig(), 16)) == repr(eval_transform(digits, 16))


def _as_plain_timm(model) -> dict[str, torch.Tensor]:
    """Our checkpoint's weights under plain timm's key names."""
    return {k.removeprefix("backbone."): v for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_plain_timm_model_through_the_pipeline(prefect_api, base_model, tmp_path):
    """Import (timm keys, no config) -> forget a class -> the adapter chain rebuilds the
    registered version -> MLflow's pyfunc of that version predicts the same."""
    from flows.ingest import ingest_flow
    from flows.process_requests import process_requests_flow
    from tasks import registry
    from tasks.model_tasks import model_for_version, workspace_splits
    from tasks.workspace import Workspace

    root = tmp_path / "ws"
    write_params(root, {**TINY, "forget": {"epochs": 2},
                        "gates": {"max_acc_f": 1.0, "max_acc_r_drop": 1.0, "max_class_drop": 1.0,
                                  "evidence": []},
                        "evidence": {"retrain_baseline": False, "membership_inference": False,
                                     "attacks": []}})
    assert cli("init", "--root", str(root)).exit_code == 0
    ingest_flow(str(root))
    # an untrained model of the same shape classifies at chance: refused, nothing registered
    params = (root / "params.yaml").read_text()
    torch.manual_seed(1)
    untrained = {k: torch.randn_like(v) * 0.02 for k, v in _as_plain_timm(base_model[0]).items()}
    save_file(untrained, tmp_path / "untrained.safetensors")
    res = cli("pretrain", "--checkpoint", str(tmp_path / "untrained.safetensors"),
                           "--arch", "vit_tiny_patch16_224", "--num-heads", "4",
                           "--root", str(root))
    assert res.exit_code == 2 and "under 20.0% (twice chance for 10 classes)" in res.output, \
        res.output
    assert "--accept imports it anyway" in res.output
    assert (root / "params.yaml").read_text() == params
    assert json.loads(cli("status", "--json", "--root", str(root)).output)[
        "production_version"] is None
    save_file(_as_plain_timm(base_model[0]), tmp_path / "plain.safetensors")
    res = cli("pretrain", "--checkpoint", str(tmp_path / "plain.safetensors"),
                           "--arch", "vit_tiny_patch16_224", "--num-heads", "4",
                           "--root", str(root))
    assert res.exit_code == 0, res.output
    # a second import into the same workspace is refused, not silently ignored
    res = cli("pretrain", "--checkpoint", str(tmp_path / "untrained.safetensors"),
              "--arch", "vit_tiny_patch16_224", "--num-heads", "4", "--root", str(root))
    assert res.exit_code == 2 and "already has a base model (production v1)" in res.output, \
        res.output
    ws = Workspace.at(root)
    status = json.loads(cli("status", "--json", "--root", str(root)).output)
    base = status["base"]
    assert base["val_acc"] > 0.8 and set(base["val_class_acc"]) == {f"digit_{i}" for i in
                                                                    range(10)}
    assert base["import"]["settings"]["num_heads"] == {"value": 4, "source": "--num-heads"}
    assert "nothing is resized or cropped" in base["preprocessing"]["steps"][0]
    c = registry.client(ws)
    run = c.get_run(c.get_model_version(c.model_name, "1").run_id)
    assert run.data.metrics["val_acc"] == pytest.approx(base["val_acc"])
    assert run.data.metrics["val_class_acc/digit_3"] == base["val_class_acc"]["digit_3"]
    assert ws.config().model.arch == "vit_tiny_patch16_224"
    assert ws.config().model.depth == 4 and ws.config().model.embed_dim == 64
    assert cli("request", "add", "digit_3", "--root", str(root)).exit_code == 0
    [out] = process_requests_flow(str(root))
    assert out["status"] == "done", out
    version = out["model_version"]
    chained, _ = model_for_version(ws, version)
    test = workspace_splits(ws)["test"]
    threes, others = test.with_classes([3]), test.with_classes([0, 5, 9])
    x = torch.stack([threes[i][0] for i in range(8)] + [others[i][0] for i in range(8)])
    with torch.no_grad():
        want = chained(x).argmax(-1).tolist()
        base = base_model[0].cpu().eval()(x).argmax(-1).tolist()
    assert base[:8].count(3) >= 6 and want[:8].count(3) <= 2, (base, want)  # digit_3 forgotten
    tags = registry.version_tags(c, version)
    assert tags["parent_version"] == "1" and tags["part_uri"].endswith("/artifacts/req-0001")
    assert tags["merged_uri"]  # it became production: one standalone export
    # a version registered before versions stored their own part: the next request stores
    # it (from the DVC-tracked adapter, sha256 checked) for its lineage
    c.delete_model_version_tag(c.model_name, str(version), "part_uri")
    assert cli("request", "add", "digit_5", "--root", str(root)).exit_code == 0
    [out] = process_requests_flow(str(root))
    assert out["status"] == "done", out
    assert registry.version_tags(c, version)["part_uri"].endswith("/part/req-0001")
    assert [(p["version"], p["kind"]) for p in registry.lineage(c, version)] == [
        (1, "full"), (version, "adapter")]
    assert registry.merged_versions(c) == [out["model_version"]]
    with torch.no_grad():
        want_next = model_for_version(ws, out["model_version"])[0](x).argmax(-1).tolist()
    code = ("import json, sys, mlflow, numpy as np; x = np.load(sys.argv[1]); "
            "print(json.dumps([mlflow.pyfunc.load_model(f'models:/forgetting-vit/{v}')"
            ".predict(x)['class_index'].tolist() for v in sys.argv[2:]]))")
    import numpy as np

    np.save(tmp_path / "x.npy", x.numpy())
    env = {**os.environ, "MLFLOW_TRACKING_URI": ws.tracking_uri}
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.npy"), str(version),
                          str(out["model_version"])], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == [want, want_next]
