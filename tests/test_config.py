from pathlib import Path

import pytest

from forgetting.config import ConfigError, load_config


def test_defaults_load_and_yaml_overrides(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("forget:\n  rank: 4\n  prototypes:\n    w_f: 0.1\n")
    cfg = load_config(p)
    assert cfg.forget.rank == 4 and cfg.forget.prototypes.w_f == 0.1
    assert cfg.forget.alpha == load_config().forget.alpha  # untouched keys keep defaults


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("forget:\n  rnak: 4\n", "forget.rnak"),
        ("forget:\n  rank: -1\n", "forget.rank"),
        ("model:\n  head: softmax\n", "model.head"),
        ("gates:\n  max_acc_f: 2\n", "gates.max_acc_f"),
        ("model:\n  image_size: 18\n  patch_size: 4\n", "patch_size"),
        ("model:\n  crop_pct: 1.5\n", "model.crop_pct"),
    ],
)
def test_bad_config_names_the_field(tmp_path, text, field):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(p)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "x.yaml"
    p.write_text("forget: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


@pytest.mark.parametrize("name", ["configs/casia100.yaml", "configs/imagenet100.yaml",
                                  "benchmarks/configs/fashion-mnist.yaml"])
def test_shipped_configs_load_and_build_their_model(name):
    """The real-size configs are valid and describe the networks they say (built on the meta
    device: no memory, no weights)."""
    import torch

    from forgetting.model import create_model
    from forgetting.preprocess import data_config

    root = Path(__file__).parents[1]
    cfg = load_config(root / name)
    with torch.device("meta"):
        model = create_model(cfg.model, 100)
    params = sum(p.numel() for p in model.parameters())
    expect = {"configs/casia100.yaml": (15e6, 25e6), "configs/imagenet100.yaml": (85e6, 87e6),
              "benchmarks/configs/fashion-mnist.yaml": (0.5e6, 1.5e6)}[name]
    assert expect[0] < params < expect[1], params
    assert len(data_config(cfg.model)["mean"]) == cfg.model.in_chans


def test_params_yaml_writes_out_every_key():
    """The repo's params.yaml says it carries every parameter: a key added to the config and
    not to the file is a default a reader of the file cannot see (values may differ where the
    file says why)."""
    import yaml

    from forgetting.config import Config, dump_config

    def keys(d: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict) and k != "fewshot":  # fewshot is a partial override
                out |= keys(v, f"{prefix}{k}.")
        return out

    shipped = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
    assert keys(yaml.safe_load(dump_config(Config()))) - keys(shipped) == set()
