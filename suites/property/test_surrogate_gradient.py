"""BPTT's gradient through IF neurons: :class:`~snnverify.runtime.torch_ref.IFNeurons` (one
autograd node, its backward pass through time written out) against the same neuron unrolled
step by step in autograd, where every operation carries its own gradient and only the spike's
derivative is the atan surrogate. Spikes must be identical and the input's gradient equal, for
every neuron the executor runs: subtractive or zero reset, leak, gain, an initial membrane,
fire on ≥ or >, static or temporal currents, T = 1, and currents that land exactly on θ."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from snnverify.runtime.torch_ref import atan_surrogate, if_neurons


class SpikeWithSurrogate(torch.autograd.Function):
    """s = H(v − θ) (or v > θ), ∂s/∂v = the atan surrogate: the one non-autograd derivative."""

    @staticmethod
    def forward(ctx, v, theta, alpha, strict):
        ctx.save_for_backward(v, theta)
        ctx.alpha = alpha
        return (v > theta if strict else v >= theta).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        v, theta = ctx.saved_tensors
        return grad * atan_surrogate(v, theta, ctx.alpha), None, None, None


def unrolled(current, theta, timesteps, static, alpha, foreign):
    """The IF neuron of ``if_neurons``' docstring, one autograd operation at a time."""
    v_init, v_reset = foreign.get("v_init"), foreign.get("v_reset")
    leak, gain, strict = foreign.get("leak"), foreign.get("gain"), foreign.get("strict", False)
    v = (theta / 2 if v_init is None else v_init).expand(current.shape if static else current.shape[1:])
    spikes = []
    for t in range(timesteps):
        step = current if static else current[t]
        v = (v if leak is None else leak * v) + (step if gain is None else gain * step)
        s = SpikeWithSurrogate.apply(v, theta.expand_as(v), alpha, strict)
        v = v - theta * s if v_reset is None else torch.where(s.bool(), v_reset.expand_as(v), v)
        spikes.append(s)
    return torch.stack(spikes)


@st.composite
def neuron_cases(draw):
    timesteps = draw(st.integers(1, 6))
    static = draw(st.booleans())
    channels, batch = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    # dyadic thresholds and currents in units of θ/4: the membrane lands exactly on θ often
    theta = torch.tensor(draw(st.lists(st.sampled_from([0.25, 0.5, 1.0, 2.0]), min_size=channels,
                                       max_size=channels)), dtype=torch.float64).view(channels, 1)
    units = st.integers(-6, 10)
    shape = (batch, channels) if static else (timesteps, batch, channels)
    current = torch.tensor(draw(st.lists(units, min_size=int(torch.Size(shape).numel()),
                                         max_size=int(torch.Size(shape).numel()))), dtype=torch.float64)
    current = current.view(shape) * theta.view(channels) / 4
    per_channel = st.lists(st.sampled_from([0.5, 0.75, 1.0, 1.25]), min_size=channels, max_size=channels)
    foreign = {}
    for field in draw(st.sets(st.sampled_from(["leak", "gain", "v_reset", "v_init"]))):
        values = torch.tensor(draw(per_channel), dtype=torch.float64).view(channels, 1)
        foreign[field] = values - 1 if field in ("v_reset", "v_init") else values
    foreign = {name: value.view(channels) for name, value in foreign.items()}
    foreign["strict"] = draw(st.booleans())
    alpha = draw(st.sampled_from([1.0, 2.0, 4.0]))
    upstream = torch.tensor(draw(st.lists(st.integers(-3, 3), min_size=timesteps * batch * channels,
                                          max_size=timesteps * batch * channels)), dtype=torch.float64)
    return current, theta.view(channels), timesteps, static, alpha, foreign, upstream.view(timesteps, batch, channels)


@settings(max_examples=300, deadline=None)
@given(neuron_cases())
def test_fused_backward_through_time_equals_the_unrolled_autograd_graph(case):
    current, theta, timesteps, static, alpha, foreign, upstream = case
    grads, spikes = [], []
    for run in (if_neurons, unrolled):
        leaf = current.clone().requires_grad_(True)
        s = run(leaf, theta, timesteps, static, alpha, foreign)
        (s * upstream).sum().backward()
        spikes.append(s.detach())
        grads.append(leaf.grad)
    assert torch.equal(spikes[0], spikes[1])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def test_the_gradient_reaches_past_steps_through_the_membrane_and_the_reset():
    """One neuron, θ = 1, v starts at 0.5, I = (0.25, 0.5, 0): v⁻ = 0.75, then 1.25 (a spike),
    then 0.25. A loss on s_1 alone reaches I_1 through σ′(1.25), and I_0 through the membrane
    and step 0's reset term: ∂v⁺_0/∂v⁻_0 = 1 − θ·σ′(0.75), the surrogate acting where no spike
    came."""
    current = torch.tensor([[0.25], [0.5], [0.0]], dtype=torch.float64, requires_grad=True)
    theta = torch.tensor([1.0], dtype=torch.float64)
    s = if_neurons(current, theta, 3, static=False)
    assert s.flatten().tolist() == [0.0, 1.0, 0.0]
    (s * torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).view(3, 1)).sum().backward()
    surrogate = {v: atan_surrogate(torch.tensor(v, dtype=torch.float64), theta, 2.0).item() for v in (0.75, 1.25)}
    expected = [surrogate[1.25] * (1 - surrogate[0.75]), surrogate[1.25], 0.0]
    assert current.grad.flatten().tolist() == pytest.approx(expected, rel=1e-14)
