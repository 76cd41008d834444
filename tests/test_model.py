import pickle

import pytest
import torch

from forgetting.config import ModelConfig
from forgetting.model import CheckpointError, create_model, load_checkpoint, save_checkpoint

CFG = dict(embed_dim=32, depth=2, num_heads=2, image_size=16, patch_size=4)


@pytest.mark.parametrize("head", ["cosface", "arcface"])
def test_margin_only_in_training_with_labels(head):
    m = create_model(ModelConfig(head=head, **CFG), 5)
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    m.eval()
    plain = m(x)
    assert torch.equal(m(x, y), plain)  # inference: a cosine classifier, no margin
    m.train()
    with torch.no_grad():
        margined = m(x, y)
    true = margined.gather(1, y[:, None]) < plain.gather(1, y[:, None])
    assert true.all()  # the margin lowers only the true class's logit
    others = torch.ones_like(plain, dtype=torch.bool).scatter_(1, y[:, None], False)
    assert torch.allclose(margined[others], plain[others], atol=1e-5)


def test_checkpoint_round_trip(tmp_path):
    m = create_model(ModelConfig(**CFG), 3).eval()
    sha = save_checkpoint(m, tmp_path / "m.safetensors", ["a", "b", "c"])
    m2, names, _ = load_checkpoint(tmp_path / "m.safetensors", expected_sha256=sha)
    x = torch.randn(2, 1, 16, 16)
    assert names == ["a", "b", "c"] and torch.equal(m(x), m2.eval()(x))
    torch.save(m.state_dict(), tmp_path / "m.pt")  # a user's plain weights-only file
    m3, _, _ = load_checkpoint(tmp_path / "m.pt", cfg=ModelConfig(**CFG), class_names=["a", "b", "c"])
    assert torch.equal(m(x), m3.eval()(x))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_bad_checkpoints_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    with pytest.raises(CheckpointError, match="refused: only safetensors or weights-only"):
        load_checkpoint(tmp_path / "evil.pt", cfg=ModelConfig(**CFG), class_names=["a", "b"])
    m = create_model(ModelConfig(**CFG), 3)
    save_checkpoint(m, tmp_path / "m.safetensors", ["a", "b", "c"])
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "cut.safetensors")
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(tmp_path / "m.safetensors", expected_sha256="0" * 64)
    torch.save(create_model(ModelConfig(**CFG), 4).state_dict(), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(tmp_path / "other.pt", cfg=ModelConfig(**CFG), class_names=["a", "b", "c"])
