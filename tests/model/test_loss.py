"""corrected_softmax_loss against values worked by hand (natural logs, tau = 1 unless stated)."""

import math

import pytest
import torch

from lightning_tt.model.loss import corrected_softmax_loss


def loss(u, v, targets, columns, log_q, w, tau=1.0):
    return corrected_softmax_loss(torch.tensor(u, dtype=torch.float64), torch.tensor(v, dtype=torch.float64),
                                  torch.tensor(targets), torch.tensor(columns),
                                  torch.tensor(log_q, dtype=torch.float64), torch.tensor(w, dtype=torch.float64), tau)


# Two rows, two columns; u = e1, e2 and v = e1, e2: logits [[1, 0], [0, 1]].
U = [[1.0, 0.0], [0.0, 1.0]]
V = [[1.0, 0.0], [0.0, 1.0]]


def test_plain_softmax():
    # each row: -log(e / (e + 1)) = log(1 + e^-1)
    expected = math.log(1 + math.exp(-1))
    assert loss(U, V, [5, 6], [5, 6], [0, 0], [1, 1]).item() == pytest.approx(expected)


def test_correction_sign():
    # q = (0.5, 0.125): s = logits - log q = [[1 + ln2, ln8], [ln2, 1 + ln8]].
    # row 0: -log softmax = log(1 + exp(ln8 - 1 - ln2)) = log(1 + 4/e)
    # row 1: log(1 + exp(ln2 - 1 - ln8)) = log(1 + 1/(4e))
    expected = (math.log(1 + 4 / math.e) + math.log(1 + 1 / (4 * math.e))) / 2
    got = loss(U, V, [5, 6], [5, 6], [math.log(0.5), math.log(0.125)], [1, 1]).item()
    assert got == pytest.approx(expected)
    # Row 0 alone (weight 0 on row 1): the right sign gives log(1 + 4/e) / 2; the wrong sign (adding
    # log q) would give log(1 + 1/(4e)) / 2.
    row0 = loss(U, V, [5, 6], [5, 6], [math.log(0.5), math.log(0.125)], [1, 0]).item()
    assert row0 == pytest.approx(math.log(1 + 4 / math.e) / 2)
    assert abs(row0 - math.log(1 + 1 / (4 * math.e)) / 2) > 0.3


def test_weights_and_temperature():
    # tau = 0.5 doubles the logits: each row log(1 + e^-2); weights 0.5 and 1 -> (0.5 + 1) / 2 of that.
    expected = 1.5 / 2 * math.log(1 + math.exp(-2))
    assert loss(U, V, [5, 6], [5, 6], [0, 0], [0.5, 1.0], tau=0.5).item() == pytest.approx(expected)


def test_accidental_hits_are_masked():
    # Both rows have item 7 as positive: column 1 is an accidental hit for row 0 and column 0 for
    # row 1, so each row's softmax has only its own column: loss 0.
    assert loss(U, V, [7, 7], [7, 7], [0, 0], [1, 1]).item() == pytest.approx(0.0)


def test_mixed_negatives_with_their_own_correction():
    # One extra uniform column v = (1, 1) for item 9 with q = M / N = 1/4 -> s = 1 + ln4 for both rows.
    # row 0: logits [1, 0, 1 + ln4] -> log((e + 1 + 4e) / e) = log(5 + 1/e); row 1 the same by symmetry.
    v = V + [[1.0, 1.0]]
    expected = math.log(5 + 1 / math.e)
    got = loss(U, v, [5, 6], [5, 6, 9], [0, 0, math.log(0.25)], [1, 1]).item()
    assert got == pytest.approx(expected)
    # An extra column that is row 0's own item is an accidental hit for row 0 only.
    got = loss(U, v, [5, 6], [5, 6, 5], [0, 0, math.log(0.25)], [1, 1]).item()
    assert got == pytest.approx((math.log(1 + math.exp(-1)) + math.log(5 + 1 / math.e)) / 2)


def test_gradients_flow_to_both_towers():
    u = torch.randn(4, 3, requires_grad=True)
    v = torch.randn(4, 3, requires_grad=True)
    value = corrected_softmax_loss(u, v, torch.arange(4), torch.arange(4), torch.zeros(4), torch.ones(4), 0.1)
    value.backward()
    assert u.grad.abs().sum() > 0 and v.grad.abs().sum() > 0


def test_only_the_rows_own_item_is_masked_and_other_repeats_count_twice():
    # u = v = e1, e2, e3 (logits = identity); targets 7, 8, 8. Row 0's target 7 is not repeated, so both
    # columns of item 8 stay in its softmax: log(1 + 2/e). Rows 1 and 2 each mask the other's column of
    # item 8 and keep column 0: log(1 + 1/e) each.
    eye = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    expected = (math.log(1 + 2 / math.e) + 2 * math.log(1 + 1 / math.e)) / 3
    assert loss(eye, eye, [7, 8, 8], [7, 8, 8], [0, 0, 0], [1, 1, 1]).item() == pytest.approx(expected)


def test_gradients_equal_those_of_the_formula_written_out():
    # The loss masks in place and scales the queries by 1/tau before the product; its gradients must
    # be those of the docstring's formula computed step by step (out of place, log_softmax).
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 6, (10,), generator=generator)  # repeats: accidental hits
    columns = torch.cat([targets, torch.randint(0, 6, (4,), generator=generator)])
    u0, v0 = torch.randn(10, 5, generator=generator), torch.randn(14, 5, generator=generator)
    log_q, w = -torch.rand(14, generator=generator) * 3, torch.rand(10, generator=generator)
    u, v = u0.clone().requires_grad_(), v0.clone().requires_grad_()
    corrected_softmax_loss(u, v, targets, columns, log_q, w, 0.2).backward()
    ru, rv = u0.clone().requires_grad_(), v0.clone().requires_grad_()
    s = ru @ rv.T / 0.2 - log_q[None, :]
    hit = (targets[:, None] == columns[None, :]) & ~torch.eye(10, 14, dtype=torch.bool)
    s = s.masked_fill(hit, float("-inf"))
    (-(w * torch.log_softmax(s, dim=1)[torch.arange(10), torch.arange(10)]).sum() / 10).backward()
    assert hit.any()
    assert torch.allclose(u.grad, ru.grad, atol=1e-5) and torch.allclose(v.grad, rv.grad, atol=1e-5)
