import torch

from forgetting.methods.gs_lora.objective import bounded_forget_loss, group_sparse_loss
from forgetting.methods.gs_lora_pp.objective import kl_to_prototype, prototype_loss


def test_group_sparse_loss_is_sum_of_group_l2_norms():
    g1 = [torch.tensor([3.0, 0.0]), torch.tensor([4.0])]
    g2 = [torch.tensor([0.0, 0.0])]
    assert torch.isclose(group_sparse_loss([g1, g2]), torch.tensor(5.0), atol=1e-5)


def test_bounded_forget_loss_stops_past_the_bound():
    assert float(bounded_forget_loss(torch.tensor(3.0), 10.0)) == 7.0
    assert float(bounded_forget_loss(torch.tensor(12.0), 10.0)) == 0.0


def test_prototype_kl():
    v = torch.randn(5, 8)
    assert float(kl_to_prototype(v, v)) < 1e-6
    assert float(kl_to_prototype(v, -v)) > 0.1
    # forgotten outputs far from their prototype past the bound cost nothing
    assert float(prototype_loss(v, -10 * v, None, None, 1.0, 0.0, bound=1e-3)) == 0.0
    assert float(prototype_loss(v, v, v, -v, 1.0, 1.0, bound=2.0)) > 2.0
