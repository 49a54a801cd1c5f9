import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dtp_fast
from dtp_fast.blocks import Block, UnsupportedLayerError, from_sequential


def test_conv_block_maps_and_switches():
    torch.manual_seed(0)
    b = dtp_fast.conv_block((3, 9, 7), 5, kernel_size=3, pool=(2, 2, 0))
    x = torch.randn(2, 3, 9, 7)
    y, idx = b.f(x)
    z = F.elu(F.conv2d(x, b.f_op.weight, b.f_op.bias, padding=1))
    y_ref, idx_ref = F.max_pool2d(z, 2, 2, return_indices=True)
    assert torch.equal(y, y_ref) and torch.equal(idx, idx_ref)
    assert b.out_shape == (5, 4, 3) and b.pre_pool_shape == (5, 9, 7)
    xh = b.g(y, idx)
    u = F.max_unpool2d(y, idx, 2, 2, output_size=(9, 7))
    xh_ref = F.conv_transpose2d(F.elu(u), b.g_op.weight, b.g_op.bias, padding=1)
    assert xh.shape == x.shape
    torch.testing.assert_close(xh, xh_ref)


@pytest.mark.parametrize("k,s,p,hw", [(3, 2, 1, (11, 9)), (2, 2, 0, (8, 8)), (3, 2, 1, (32, 32))])
def test_lenet_style_pool_output_size(k, s, p, hw):
    b = dtp_fast.conv_block((2, *hw), 4, kernel_size=5, pool=(k, s, p))
    x = torch.randn(3, 2, *hw)
    y, idx = b.f(x)
    assert b.g(y, idx).shape == x.shape  # unpool uses the pre-pool size, convT maps back exactly


def test_strided_conv_feedback_shape():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    net = from_sequential(seq, (3, 7, 7))
    x = torch.randn(2, 3, 7, 7)
    acts, sw = net.activations(x)
    assert net.block_list()[0].g_op is None
    g = net.block_list()[1]
    assert g.g(acts[1], sw[1]).shape == acts[0].shape
    # conv blocks' feedback is built even if they are not first
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, stride=2), nn.Tanh(), nn.Flatten(), nn.Linear(36, 3))
    net = from_sequential(seq, (3, 10, 10))
    acts, sw = net.activations(torch.randn(1, 3, 10, 10))
    assert net.block_list()[1].g(acts[1], sw[1]).shape == acts[0].shape


def test_from_sequential_matches_sequential_and_names():
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.ELU(),  # pool before act: accepted
                        nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
                        nn.Flatten(), nn.Linear(6 * 2 * 2, 16), nn.Tanh(), nn.Linear(16, 3))
    x = torch.randn(5, 1, 8, 8)
    expected = seq(x)
    net = from_sequential(seq, (1, 8, 8))
    assert net.names == ["conv_0", "conv_1", "fc_0", "fc_1"]
    assert net.feedback_names == ["conv_1", "fc_0", "fc_1"]
    torch.testing.assert_close(net(x), expected)
    # the user's layers are used as they are, not copied
    assert net.blocks["conv_0"].f_op is seq[0]
    assert net.num_classes == 3
    # forward/feedback parameters are disjoint and complete
    fwd, fb = set(map(id, net.forward_parameters())), set(map(id, net.feedback_parameters()))
    assert not fwd & fb and len(fwd | fb) == len(list(net.parameters()))


@pytest.mark.parametrize("layer,match", [
    (nn.BatchNorm2d(4), "BatchNorm2d"),
    (nn.Dropout(0.5), "Dropout"),
    (nn.Sigmoid(), "Sigmoid"),
    (nn.AvgPool2d(2), "AvgPool2d"),
])
def test_unsupported_layer_is_named(layer, match):
    seq = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), layer, nn.Flatten(), nn.Linear(4 * 64, 10))
    with pytest.raises(UnsupportedLayerError, match=match) as info:
        from_sequential(seq, (1, 8, 8))
    assert "'1'" in str(info.value)  # the layer's position in the Sequential
    assert "Supported layers" in str(info.value)


def test_structural_errors():
    with pytest.raises(UnsupportedLayerError, match="Flatten"):
        from_sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(2, 3), nn.Linear(3, 2)), (1, 3, 3))
    with pytest.raises(UnsupportedLayerError, match="groups"):
        from_sequential(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.Flatten(), nn.Linear(2, 2)), (2, 3, 3))
    with pytest.raises(UnsupportedLayerError, match="alpha"):
        from_sequential(nn.Sequential(nn.Linear(4, 4), nn.ELU(0.5), nn.Linear(4, 2)), (4,))
    with pytest.raises(ValueError, match="at least two"):
        from_sequential(nn.Sequential(nn.Linear(4, 2)), (4,))
    with pytest.raises(ValueError, match="does not fit"):
        from_sequential(nn.Sequential(nn.Conv2d(1, 2, 5), nn.Flatten(), nn.Linear(2, 2)), (1, 3, 3))


def test_input_shape_error():
    net = dtp_fast.mlp((1, 8, 8), 10, hidden=[16])
    with pytest.raises(ValueError, match=r"expects \(batch, 1, 8, 8\)"):
        net(torch.randn(2, 1, 7, 8))
    with pytest.raises(ValueError, match="does not fit"):
        net.activations(torch.randn(2, 64))


def test_presets_shapes():
    assert dtp_fast.simple_vgg((3, 32, 32), 10).names == ["conv_0", "conv_1", "conv_2", "conv_3", "conv_4", "fc"]
    net = dtp_fast.lenet((3, 32, 32), 10)
    assert net.names == ["conv_0", "conv_1", "fc1", "fc2"]
    assert net.blocks["fc1"].f_op.in_features == 4096  # ALGORITHM.md: 4096 for 32x32 inputs
    with pytest.raises(ValueError, match="too small"):
        dtp_fast.simple_vgg((1, 8, 8), 10)
    with pytest.raises(ValueError, match="unknown preset 'vgg'"):
        dtp_fast.get_preset("vgg")


def test_block_without_feedback_rejects_g():
    b = Block(nn.Linear(3, 2), in_shape=(3,), feedback=False)
    with pytest.raises(RuntimeError, match="no feedback layer"):
        b.g(torch.zeros(1, 2), None)


def test_overlapping_unpool_is_deterministic_last_write_wins():
    """With a 3/2/1 pool two windows can share a switch; G keeps the last window's value."""
    from dtp_fast.ops import unpool_act2d_ref

    torch.manual_seed(0)
    b = dtp_fast.conv_block((2, 9, 9), 3, kernel_size=5, pool=(3, 2, 1))
    y, idx = b.f(torch.randn(4, 2, 9, 9))
    flat = idx.flatten(2)
    assert any(len(torch.unique(row)) < len(row) for row in flat.reshape(-1, flat.shape[-1]))  # duplicates exist
    y2 = torch.randn_like(y)  # different values at duplicate switches, as in G(y + dy; I0)
    torch.testing.assert_close(b.h(y2, idx), unpool_act2d_ref(y2, idx, "elu", (9, 9)), rtol=0, atol=0)


def test_from_sequential_refuses_a_module_with_its_own_forward():
    """A module computing b(sigmoid(a(x)) * 3) is not the sequence of its children: refused, not rebuilt as
    a different network; so is an nn.Sequential subclass with its own forward, also when nested."""
    import pytest
    import torch
    from torch import nn

    from dtp_fast import UnsupportedLayerError, from_sequential

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 2)

        def forward(self, x):
            return self.b(torch.sigmoid(self.a(x)) * 3)

    class Scaled(nn.Sequential):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(UnsupportedLayerError, match="the model \\(Custom\\) has a forward of its own"):
        from_sequential(Custom(), (4,))
    with pytest.raises(UnsupportedLayerError, match="layer 1 \\(Scaled\\) has a forward of its own"):
        from_sequential(nn.Sequential(nn.Linear(4, 5), Scaled(nn.ELU(), nn.Linear(5, 2))), (4,))
    net = from_sequential(nn.Sequential(nn.Linear(4, 5), nn.Sequential(nn.ELU(), nn.Linear(5, 2))), (4,))
    assert net.feedback_names == ["fc_1"]
