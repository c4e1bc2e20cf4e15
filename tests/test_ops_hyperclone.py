"""HyperCloning: whole-factor width growth, tiled clones, noise that cancels over the clones."""

import pytest
import torch
from ops_helpers import FAMILY, grown_plan, models, probe

from growdsl.lang.errors import ScheduleError
from growdsl.ops.check import check_preservation
from growdsl.ops.operators import grow
from growdsl.ops.width import WidthMaps

TIED = FAMILY.replace("layers 12", "layers 12 tied")


def widened(growth: str, family: str = FAMILY):
    plan, g = grown_plan(growth, family=family)
    base, target = models(plan)
    grow(base.state_dict(), target.state_dict(), g)
    return base, target, g


@pytest.mark.parametrize("family", [FAMILY, TIED], ids=["untied", "tied"])
@pytest.mark.parametrize("factor", [2, 3])
def test_the_grown_model_computes_the_base_function_with_noise(family, factor):
    base, target, g = widened(f"widen dim {64 * factor} init hyperclone noise 0.05", family)
    assert (g.target.n_heads, g.target.n_kv_heads, g.target.ffn_dim) == (4 * factor, 2 * factor, 96 * factor)
    result = check_preservation(base, target, probe(), g.guarantee)
    assert g.guarantee == "exact" and result.max_abs_diff < 1e-10 * result.scale, result


def test_the_noise_breaks_the_clones_symmetry_and_sums_to_zero_over_them():
    _, noisy, g = widened("widen dim 128 init hyperclone noise 0.05")
    _, plain, _ = widened("widen dim 128 init hyperclone noise 0")
    _, direct, _ = widened("widen dim 128 init direct")
    maps = WidthMaps(g.source, g.target)
    for name, w in plain.state_dict().items():
        assert torch.equal(w, direct.state_dict()[name]), name  # without noise: direct's tiled clones
    w, w0 = noisy.state_dict()["layers.0.attention.wq.weight"], plain.state_dict()["layers.0.attention.wq.weight"]
    delta = (w - w0).double()
    assert delta.abs().max() > 0.01 * w0.pow(2).mean().sqrt()  # the clones differ...
    summed = torch.zeros(delta.shape[0], g.source.dim, dtype=torch.float64).index_add_(1, maps.dim, delta)
    assert summed.abs().max() < 1e-12  # ...by noise that cancels over each input's clones
    rms = (delta.pow(2).mean() / w0.double().pow(2).mean()).sqrt()
    assert 0.03 < rms < 0.07  # the noise's std is 0.05 of the grown weight's RMS


def test_noise_is_the_same_every_time():
    _, a, _ = widened("widen dim 128 init hyperclone")
    _, b, _ = widened("widen dim 128 init hyperclone")
    assert all(torch.equal(t, b.state_dict()[n]) for n, t in a.state_dict().items())


@pytest.mark.parametrize(
    "growth,message",
    [
        ("widen dim 96 init hyperclone", "hyperclone grows every width by a whole factor: dim 64 -> 96 is x1.5"),
        ("widen dim 128 ffn 200 init hyperclone", "ffn 96 -> 200"),
        ("stack x2 init hyperclone", "hyperclone does not grow depth: it can grow width"),
        ("widen dim 128 init hyperclone noise 2 steps", "'noise' of init hyperclone takes a plain number"),
    ],
)
def test_what_it_cannot_do_is_refused_at_its_line(growth, message):
    with pytest.raises(ScheduleError) as e:
        grown_plan(growth)
    assert any(message in d.message and d.span.line == 6 for d in e.value.errors), e.value.errors
