"""Distillation losses against hand-computed values, and their place in fit (training, checkpoints, resume)."""

import math

import pytest
import torch
import torch.nn as nn

from slimkit.compress.distill import (FeatureKD, FrozenTeacher, LogitKD, MultiTeacherKD, MutualLearning, SelfDistill,
                                      build_distiller, kd_divergence, last_feature_layer, list_distillers, self_distill)
from slimkit.data import ImageTensorDataset, load_data
from slimkit.engine import Hook, TrainConfig, fit
from slimkit.errors import BadInputError


def softmax(values, t):
    exps = [math.exp(v / t) for v in values]
    return [e / sum(exps) for e in exps]


def kl_by_hand(student, teacher, t):
    ps, pt = softmax(student, t), softmax(teacher, t)
    return t * t * sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))


def ce_by_hand(logits, label):
    return -math.log(softmax(logits, 1.0)[label])


S = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
T1 = [[2.0, 1.0, 0.0], [0.5, 0.5, 2.0]]
T2 = [[0.0, 3.0, 1.0], [1.0, 0.0, 0.0]]
Y = [1, 2]


class Const(nn.Module):
    """A 'teacher' that ignores its input and returns fixed logits, counting its calls."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.logits


def test_kd_divergence_by_hand():
    got = kd_divergence(torch.tensor(S), torch.tensor(T1), temperature=2.0)
    expected = sum(kl_by_hand(s, t, 2.0) for s, t in zip(S, T1)) / 2
    assert float(got) == pytest.approx(expected, rel=1e-6)
    assert float(kd_divergence(torch.tensor(S), torch.tensor(S), 3.0)) == pytest.approx(0.0, abs=1e-7)


def test_logit_kd_mixes_hard_and_soft_terms_by_hand():
    loss = LogitKD(Const(T1), temperature=4.0, alpha=0.7, label_smoothing=0.0)
    got = loss(torch.tensor(S), torch.tensor(Y), torch.zeros(2, 1))
    ce = sum(ce_by_hand(s, y) for s, y in zip(S, Y)) / 2
    kd = sum(kl_by_hand(s, t, 4.0) for s, t in zip(S, T1)) / 2
    assert float(got) == pytest.approx(0.3 * ce + 0.7 * kd, rel=1e-6)
    assert loss.last_terms["ce"] == pytest.approx(ce, rel=1e-6) and loss.last_terms["kd"] == pytest.approx(kd, rel=1e-6)


def test_multi_teacher_weights_by_hand():
    s, y, x = torch.tensor(S), torch.tensor(Y), torch.zeros(2, 1)
    loss = MultiTeacherKD([Const(T1), Const(T2)], weights=[3.0, 1.0], temperature=2.0, alpha=1.0)
    kd1 = sum(kl_by_hand(a, b, 2.0) for a, b in zip(S, T1)) / 2
    kd2 = sum(kl_by_hand(a, b, 2.0) for a, b in zip(S, T2)) / 2
    assert loss.weights == [0.75, 0.25]
    assert float(loss(s, y, x)) == pytest.approx(0.75 * kd1 + 0.25 * kd2, rel=1e-6)
    # A zero-weight teacher is skipped entirely, and the rest is single-teacher KD.
    muted = Const(T2)
    only_first = MultiTeacherKD([Const(T1), muted], weights=[1.0, 0.0], temperature=2.0, alpha=0.4)
    single = LogitKD(Const(T1), temperature=2.0, alpha=0.4)
    assert float(only_first(s, y, x)) == pytest.approx(float(single(s, y, x)), rel=1e-6) and muted.calls == 0
    with pytest.raises(BadInputError, match="2 teacher weights given for 1"):
        MultiTeacherKD([Const(T1)], weights=[1, 2])


def test_teacher_with_other_classes_is_a_clear_error():
    with pytest.raises(BadInputError, match="same classes"):
        LogitKD(Const([[0.0, 1.0]] * 2))(torch.tensor(S), torch.tensor(Y), torch.zeros(2, 1))


def test_mutual_learning_loss_and_gradients_by_hand():
    peer_logits = torch.tensor(T1)

    class Peer(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(peer_logits.clone())

        def forward(self, x):
            return self.w

    dml = MutualLearning(Peer(), temperature=1.0, alpha=1.0, label_smoothing=0.0)
    s = torch.tensor(S, requires_grad=True)
    total = dml(s, torch.tensor(Y), torch.zeros(2, 1))
    ce_s = sum(ce_by_hand(a, y) for a, y in zip(S, Y)) / 2
    ce_p = sum(ce_by_hand(a, y) for a, y in zip(T1, Y)) / 2
    kl_ps = sum(kl_by_hand(a, b, 1.0) for a, b in zip(S, T1)) / 2  # KL(peer || student)
    kl_sp = sum(kl_by_hand(b, a, 1.0) for a, b in zip(S, T1)) / 2  # KL(student || peer)
    assert float(total.detach()) == pytest.approx(ce_s + kl_ps + ce_p + kl_sp, rel=1e-6)
    total.backward()
    # The student's gradient comes only from its own CE and its mimicry of the (fixed) peer:
    # d/ds [CE + KL(p_peer || p_s)] = (2 p_s - onehot - p_peer) / batch.
    p_s, p_peer = torch.softmax(torch.tensor(S), 1), torch.softmax(peer_logits, 1)
    onehot = torch.nn.functional.one_hot(torch.tensor(Y), 3).float()
    torch.testing.assert_close(s.grad, (2 * p_s - onehot - p_peer) / 2)
    assert "peer.w" in dict(dml.named_parameters())


def small_net(width=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(2 * width, 10))


def test_feature_kd_adapters_and_loss_by_hand():
    student, teacher = small_net(4), small_net(6, seed=1)
    x = torch.randn(2, 3, 8, 8)
    assert last_feature_layer(student, x) == "5"  # the ReLU after the last conv: the last 4-d map
    kd = FeatureKD(student, teacher, x, pairs=[("2", "5")], beta=2.0, label_smoothing=0.0)
    assert [tuple(a.weight.shape) for a in kd.adapters] == [(12, 4, 1, 1)]  # 4 -> 12 channels, 1x1
    assert set(kd.state_dict()) == {"adapters.0.weight"}  # the frozen teacher is not saved or trained
    logits = student(x)
    got = kd(logits, torch.tensor([1, 2]), x)
    with torch.no_grad():
        f_s = kd.adapters[0](student[:3](x))  # 4x8x8 map -> 12 channels
        f_t = teacher.eval()[:6](x)  # 12x4x4 map: the student map is resized to 4x4
        f_s = torch.nn.functional.interpolate(f_s, size=(4, 4), mode="bilinear", align_corners=False)
        expected = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2])) + 2.0 * ((f_s - f_t) ** 2).mean()
    assert float(got.detach()) == pytest.approx(float(expected), rel=1e-5)
    kd.close()
    with pytest.raises(BadInputError, match="no layer named"):
        FeatureKD(student, teacher, x, pairs=[("nope", "5")])


def test_frozen_teacher_converts_the_input_format_exactly():
    raw = torch.randint(0, 256, (4, 1, 10, 10), dtype=torch.uint8)
    labels = torch.zeros(4, dtype=torch.long)
    s_fmt = ((1, 10, 10), (0.5,), (0.5,))
    t_fmt = ((3, 10, 10), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    student_batch = ImageTensorDataset(raw, labels, *s_fmt).tensors()[0]
    teacher_batch = ImageTensorDataset(raw, labels, *t_fmt).tensors()[0]
    torch.testing.assert_close(FrozenTeacher(nn.Identity(), s_fmt, t_fmt).adapt(student_batch), teacher_batch)


def test_registry_builds_every_method():
    assert list_distillers() == ["dml", "feature", "kd", "multi", "self"]
    assert isinstance(build_distiller("kd", teacher=Const(T1), alpha=0.2), LogitKD)
    with pytest.raises(BadInputError, match="unknown distillation method 'crd'"):
        build_distiller("crd")


@pytest.fixture(scope="module")
def data():
    return load_data("digits", (3, 8, 8), train_samples=128, val_samples=64)


class InterruptAt(Hook):
    def on_epoch_begin(self, state):
        if state.epoch == 1:
            raise KeyboardInterrupt


@pytest.mark.parametrize("method", ["feature", "dml"])
def test_distiller_state_is_checkpointed_and_resumes_exactly(data, tmp_path, method):
    teacher = small_net(6, seed=1)
    x = data.train.tensors()[0][:2]

    def make():
        student = small_net(4)
        if method == "feature":
            return student, FeatureKD(student, teacher, x, alpha=0.5)
        return student, MutualLearning(small_net(4, seed=2))

    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.01, label_smoothing=0.1)
    straight_student, straight_loss = make()
    fit(straight_student, data, cfg, loss_fn=straight_loss, out_dir=tmp_path / "a", progress=False)
    assert straight_loss.label_smoothing == 0.1  # filled in from the config
    s, loss = make()
    with pytest.raises(KeyboardInterrupt):
        fit(s, data, cfg, loss_fn=loss, out_dir=tmp_path / "b", hooks=[InterruptAt()], progress=False)
    s, loss = make()
    fit(s, data, cfg, loss_fn=loss, out_dir=tmp_path / "b", resume=True, progress=False)
    for a, b in ((straight_student, s), (straight_loss, loss)):  # student and adapters / peer
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(v, small_net(4).state_dict()[k]) for k, v in s.state_dict().items())


def test_self_distill_uses_a_frozen_copy_of_the_original(data):
    original = small_net(4)
    before = {k: v.clone() for k, v in original.state_dict().items()}
    compressed = small_net(4, seed=3)
    result = self_distill(compressed, original, data, TrainConfig(epochs=1, batch_size=32), progress=False)
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())  # the original is untouched
    assert result.epochs_completed == 1 and "train_kd" in result.history[0]
    loss = SelfDistill(original)
    with torch.no_grad():
        original[-1].weight.add_(1.0)  # edits after the fact do not reach the teacher copy
    assert not torch.equal(loss.teachers[0].model[-1].weight, original[-1].weight)
