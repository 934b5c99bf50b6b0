"""BatchNorm folding is exact to float32 rounding: the folded network's outputs equal the
original's in eval mode with relative error ≤ 1e-5, for any shape, with or without affine
parameters and conv bias."""

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from snnverify.convert.fold_bn import fold_batchnorm, fuse
from snnverify.convert.trace import trace

TOLERANCE = 1e-5


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a − e| / max |e|: relative to the output's scale, so values near zero do not blow up."""
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def randomise_statistics(bn: nn.modules.batchnorm._BatchNorm, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=generator) * 2)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) * 4 + 1e-3)
        if bn.affine:
            bn.weight.copy_(torch.randn(bn.num_features, generator=generator))
            bn.bias.copy_(torch.randn(bn.num_features, generator=generator))


@st.composite
def conv_bn_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2]))
    in_channels = groups * draw(st.integers(1, 4))
    out_channels = groups * draw(st.integers(1, 6))
    kernel = draw(st.integers(1, 5))
    size = draw(st.integers(kernel, 9))
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=draw(st.integers(1, 3)),
                     padding=draw(st.integers(0, kernel // 2)), groups=groups, bias=draw(st.booleans()))
    bn = nn.BatchNorm2d(out_channels, affine=draw(st.booleans()), eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])))
    return conv, bn, (draw(st.integers(1, 4)), in_channels, size, size), draw(st.integers(0, 2**31))


@given(conv_bn_cases())
def test_conv_bn_fold_is_exact(case):
    conv, bn, shape, seed = case
    torch.manual_seed(seed)
    randomise_statistics(bn, seed)
    x = torch.randn(shape)
    reference = bn.eval()(conv.eval()(x))
    fused = fuse(conv, bn)
    assert relative_error(fused(x), reference) <= TOLERANCE
    assert fused.bias is not None and conv.weight.data_ptr() != fused.weight.data_ptr()  # original untouched


@given(st.integers(1, 32), st.integers(1, 32), st.booleans(), st.booleans(), st.integers(0, 2**31))
def test_linear_bn_fold_is_exact(fan_in, fan_out, bias, affine, seed):
    torch.manual_seed(seed)
    linear, bn = nn.Linear(fan_in, fan_out, bias=bias), nn.BatchNorm1d(fan_out, affine=affine)
    randomise_statistics(bn, seed)
    x = torch.randn(5, fan_in)
    assert relative_error(fuse(linear, bn)(x), bn.eval()(linear(x))) <= TOLERANCE


@given(st.booleans(), st.booleans(), st.integers(0, 2**31))
def test_fold_pass_on_a_traced_network(affine, bias, seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=bias), nn.BatchNorm2d(8, affine=affine), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, stride=2, bias=bias), nn.BatchNorm2d(8, affine=affine), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 3 * 3, 5, bias=bias), nn.BatchNorm1d(5, affine=affine))
    for i, bn in enumerate(m for m in model if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        randomise_statistics(bn, seed + i)
    x = torch.randn(4, 3, 7, 7)
    folded = fold_batchnorm(trace(model, x))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert relative_error(folded(x), model.eval()(x)) <= TOLERANCE


def test_unfoldable_batchnorm_is_a_clear_error():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.BatchNorm2d(2))
    gm = trace(model, torch.randn(1, 1, 5, 5))
    try:
        fold_batchnorm(gm)
    except ValueError as error:
        assert "'2'" in str(error) and "not a Conv2d or Linear" in str(error)
    else:
        raise AssertionError("a BatchNorm after a ReLU was folded")
