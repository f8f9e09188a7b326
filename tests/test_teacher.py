"""EMATeacher / functional EMA against the hand formula iterated in float64."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from densessl import EMATeacher
from densessl.functional import ema_decay, ema_update_


def make_student(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def train_step(student: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator) -> None:
    """One SGD step in train mode: moves parameters and BatchNorm running statistics."""
    student.train()
    x = torch.randn(4, 3, 5, 5, generator=gen)
    loss = student(x).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_decay_schedule_values():
    # hand values of min(1 - 1/(t+1), decay)
    assert [ema_decay(t, 0.99) for t in range(4)] == [0.0, 0.5, pytest.approx(2 / 3), 0.75]
    assert ema_decay(49, 0.99) == pytest.approx(0.98)  # 1 - 1/50
    assert ema_decay(99, 0.99) == pytest.approx(0.99)
    assert ema_decay(10_000, 0.99) == 0.99
    assert ema_decay(5, 0.0) == 0.0
    with pytest.raises(ValueError, match="step"):
        ema_decay(-1, 0.9)
    with pytest.raises(ValueError, match="decay"):
        ema_decay(0, 1.5)


def test_ema_update_functional_hand_values_and_errors():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([[3.0]], dtype=torch.float64)
    ema_update_([a, b], [torch.tensor([5.0, 6.0]), torch.tensor([[7.0]], dtype=torch.float64)], 0.25)
    assert a.tolist() == [4.0, 5.0]  # 0.25*1 + 0.75*5, 0.25*2 + 0.75*6
    assert b.item() == 6.0
    with pytest.raises(ValueError, match="sources"):
        ema_update_([torch.zeros(2)], [torch.zeros(3)], 0.5)
    with pytest.raises(ValueError, match="sources"):
        ema_update_([torch.zeros(2)], [], 0.5)
    with pytest.raises(TypeError, match="sources"):
        ema_update_([torch.zeros(2)], [torch.zeros(2, dtype=torch.float64)], 0.5)
    with pytest.raises(TypeError, match="targets"):
        ema_update_([torch.zeros(2, dtype=torch.long)], [torch.zeros(2, dtype=torch.long)], 0.5)
    with pytest.raises(ValueError, match="decay"):
        ema_update_([torch.zeros(2)], [torch.zeros(2)], -0.1)


def run_and_track(buffers: str, decay: float, steps: int = 20):
    """Train a student, update the teacher, and iterate the hand formula in float64 alongside."""
    student = make_student()
    teacher = EMATeacher(student, decay=decay, buffers=buffers)
    initial = {k: v.detach().clone().double() for k, v in teacher.model.state_dict().items()}
    expected = copy.deepcopy(initial)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    param_names = {n for n, _ in student.named_parameters()}
    for t in range(steps):
        train_step(student, opt, gen)
        d = min(1 - 1 / (t + 1), decay)
        for name, value in student.state_dict().items():
            value = value.detach().double()
            if name in param_names:
                expected[name] = d * expected[name] + (1 - d) * value
            elif buffers == "copy" or (buffers == "ema" and name.endswith("num_batches_tracked")):
                expected[name] = value.clone()
            elif buffers == "ema":
                expected[name] = d * expected[name] + (1 - d) * value
        teacher.update(student)
    return student, teacher, initial, expected


@pytest.mark.parametrize("buffers", ["copy", "ema", "none"])
def test_ema_matches_hand_formula_params_and_buffers(buffers):
    student, teacher, initial, expected = run_and_track(buffers, decay=0.9)
    got = teacher.model.state_dict()
    assert set(got) == set(expected)
    for name, value in got.items():
        torch.testing.assert_close(value.double(), expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert int(teacher.num_updates) == 20
    # the buffers really moved/stayed as the mode says (the test is not vacuous)
    rm = "1.running_mean"
    assert not torch.allclose(student.state_dict()[rm].double(), initial[rm])
    if buffers == "copy":
        assert torch.equal(got[rm], student.state_dict()[rm])
        assert int(got["1.num_batches_tracked"]) == 20
    elif buffers == "ema":
        assert not torch.allclose(got[rm], student.state_dict()[rm])
        assert int(got["1.num_batches_tracked"]) == 20
    else:
        assert torch.equal(got[rm].double(), initial[rm])
        assert int(got["1.num_batches_tracked"]) == 0
    # the EMA is not simply the student (decay 0.9 after 20 steps of SGD)
    assert not torch.allclose(got["0.weight"], student.state_dict()["0.weight"])


def test_first_update_copies_student_even_with_decay_one():
    student = make_student()
    teacher = EMATeacher(student, decay=1.0)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.update(student)  # t = 0: decay_t = min(0, 1) = 0
    for (n, p), (_, q) in zip(teacher.model.named_parameters(), student.named_parameters()):
        assert torch.equal(p, q), n
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.update(student)  # t = 1: decay_t = min(1/2, 1) = 1/2
    for (n, p), (_, q) in zip(teacher.model.named_parameters(), student.named_parameters()):
        torch.testing.assert_close(p, q - 0.5, msg=n)


def test_teacher_is_frozen_independent_copy():
    student = make_student()
    teacher = EMATeacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for p, q in zip(teacher.model.parameters(), student.parameters()):
        assert p.data_ptr() != q.data_ptr() and torch.equal(p, q)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    y = teacher(x)
    assert not y.requires_grad
    teacher.update(student)
    assert all(p.grad is None for p in teacher.parameters())


def test_state_dict_round_trip():
    _, teacher, _, _ = run_and_track("ema", decay=0.95, steps=7)
    fresh = EMATeacher(make_student(seed=123), decay=0.95, buffers="ema")
    assert int(fresh.num_updates) == 0
    fresh.load_state_dict(teacher.state_dict())
    assert int(fresh.num_updates) == 7
    a, b = teacher.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys() and "num_updates" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and both continue identically: the step count drives the same decay
    other = make_student(seed=5)
    teacher.update(other)
    fresh.update(other)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k


def test_compile_wrapper_is_unwrapped():
    student = make_student()
    compiled = torch.compile(student)  # not run: only the wrapper matters
    teacher = EMATeacher(compiled)
    assert not any(k.startswith("model._orig_mod") for k in teacher.state_dict())
    assert isinstance(teacher.model, nn.Sequential)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.update(compiled)
    for p, q in zip(teacher.model.parameters(), student.parameters()):
        assert torch.equal(p, q)


def test_ddp_wrapper_is_unwrapped(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        student = make_student()
        ddp = nn.parallel.DistributedDataParallel(student)
        teacher = EMATeacher(ddp)
        assert isinstance(teacher.model, nn.Sequential)
        assert not any(k.startswith("model.module") for k in teacher.state_dict())
        with torch.no_grad():
            for p in student.parameters():
                p.mul_(2.0)
        teacher.update(ddp)
        for p, q in zip(teacher.model.parameters(), student.parameters()):
            assert torch.equal(p, q)
        teacher.update(student)  # the plain module is accepted too
        assert int(teacher.num_updates) == 2
    finally:
        dist.destroy_process_group()


def test_dataparallel_wrapper_is_unwrapped():
    student = make_student()
    teacher = EMATeacher(nn.DataParallel(student))
    assert isinstance(teacher.model, nn.Sequential)


def test_structure_mismatch_raises():
    teacher = EMATeacher(make_student())
    with pytest.raises(ValueError, match="student"):
        teacher.update(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1)))
    wrong_shape = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, 2, 1))
    with pytest.raises(ValueError, match=r"student parameter '0.weight'"):
        teacher.update(wrong_shape)
    with pytest.raises(ValueError, match="student"):
        teacher.update(make_student().double())
    with pytest.raises(TypeError, match="student"):
        teacher.update("not a module")
    assert int(teacher.num_updates) == 0  # failed updates do not count


def test_buffer_mismatch_raises_unless_buffers_none():
    no_bn = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Identity(), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with_bn = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, affine=False), nn.ReLU(), nn.Conv2d(4, 2, 1)
    )
    with pytest.raises(ValueError, match="buffers"):
        EMATeacher(with_bn, buffers="copy").update(no_bn)
    EMATeacher(with_bn, buffers="none").update(no_bn)  # parameters match: fine


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="decay"):
        EMATeacher(make_student(), decay=1.01)
    with pytest.raises(ValueError, match="decay"):
        EMATeacher(make_student(), decay=-0.5)
    with pytest.raises(TypeError, match="decay"):
        EMATeacher(make_student(), decay="0.99")
    with pytest.raises(ValueError, match="buffers"):
        EMATeacher(make_student(), buffers="average")
    with pytest.raises(TypeError, match="student"):
        EMATeacher(lambda x: x)


def test_update_reads_nothing_back_to_the_host_and_resumes_after_load(monkeypatch):
    # update() used to read num_updates back (int(buffer)): a device sync every step on GPU.
    student = make_student()
    teacher = EMATeacher(student, decay=0.9, buffers="ema")
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)

    def refuse(*args, **kwargs):
        raise AssertionError("host read of a tensor in EMATeacher.update")

    train_step(student, opt, gen)
    teacher.update(student)
    with monkeypatch.context() as m:
        for name in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist"):
            m.setattr(torch.Tensor, name, refuse)
        for _ in range(3):
            train_step(student, opt, gen)
            teacher.update(student)
    assert int(teacher.num_updates) == 4
    # a loaded teacher continues the schedule at t = 4 (decay min(1 - 1/5, 0.9) = 0.8)
    loaded = EMATeacher(make_student(seed=5), decay=0.9, buffers="ema")
    loaded.load_state_dict(teacher.state_dict())
    train_step(student, opt, gen)
    before = loaded.model[0].weight.detach().clone()
    loaded.update(student)
    torch.testing.assert_close(loaded.model[0].weight, 0.8 * before + 0.2 * student[0].weight.detach())
    # and loading an earlier state rewinds it (t = 0: a copy)
    loaded.load_state_dict(EMATeacher(make_student(), decay=0.9).state_dict())
    loaded.update(student)
    torch.testing.assert_close(loaded.model[0].weight, student[0].weight.detach())
