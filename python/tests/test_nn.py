"""ellipse.nn from Python: a layer written in Python trained by the library's optimizer, inside Sequential; an
optimizer written in Python; both driven by the library's training loop, stopped and resumed."""
import json

import numpy as np
import pytest

import ellipse
from ellipse import models, nn


class Residual(nn.Module):
    """x + W2 relu(W1 x): a layer of our own, built from the library's layers and ops."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = self.register_module("fc1", nn.Linear(dim, hidden, gen=ellipse.Generator(1)))
        self.fc2 = self.register_module("fc2", nn.Linear(hidden, dim, gen=ellipse.Generator(2)))
        self.scale = self.register_parameter("scale", ellipse.ones([dim]))

    def forward(self, x):
        return x + self.fc2(ellipse.relu(self.fc1(x))) * self.scale


def test_python_module_trains_inside_sequential():
    gen = ellipse.Generator(0)
    model = nn.Sequential([Residual(4, 16), nn.LayerNorm(4), nn.Linear(4, 3, gen=gen)])
    assert list(model.named_parameters()) == ["0.scale", "0.fc1.weight", "0.fc1.bias", "0.fc2.weight", "0.fc2.bias",
                                              "1.weight", "1.bias", "2.weight", "2.bias"]
    x = ellipse.randn([32, 4], gen=gen)
    targets = ellipse.argmax(x[:, :3], 1)  # a learnable labelling
    optimizer = nn.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = ellipse.cross_entropy(model(x), targets)
        loss.backward()
        nn.clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert optimizer.steps == 30
    assert (optimizer.name, optimizer.buffer_names) == ("AdamW", ["adam_m", "adam_v"])
    assert len(optimizer.state()) == 2 * len(model.parameters())
    assert model.parameter("0.scale").grad is not None


def test_state_dict_and_checkpoint_round_trip(tmp_path):
    layer = Residual(4, 8)
    saved = {name: tensor.numpy().copy() for name, tensor in layer.state_dict().items()}
    nn.save_parameters(str(tmp_path / "model.safetensors"), layer, {"step": "3"})
    with ellipse.no_grad():  # in-place updates of parameters happen outside autograd
        for parameter in layer.parameters():
            parameter.fill_(0)
    assert nn.load_parameters(str(tmp_path / "model.safetensors"), layer) == {"step": "3"}
    for name, tensor in layer.state_dict().items():
        np.testing.assert_array_equal(tensor.numpy(), saved[name])
    with pytest.raises(ellipse.Error, match="load_state_dict: the names do not match .*missing: .scale"):
        layer.load_state_dict({"fc1.weight": ellipse.zeros([1])})


class Adagrad(nn.Optimizer):
    """An optimizer of our own: g = grad + decay * p, then p -= lr * g / (sqrt(sum of g^2 so far) + 1e-10). Matrices
    decay by 0.01 unless their group says otherwise; vectors do not."""

    def __init__(self, parameters, lr):
        super().__init__("Adagrad", parameters, lr, ["sum_of_squares"],
                         weight_decay=lambda p: 0.01 if len(p.shape) >= 2 else 0.0)

    @ellipse.no_grad()
    def step(self):
        self.begin_step()
        for slot in self.slots():
            g = self.gradient(slot)
            if g is None:
                continue
            g = g + slot.parameter * slot.weight_decay
            slot.buffers[0].add_(g * g)
            slot.parameter.add_(g / (ellipse.sqrt(slot.buffers[0]) + 1e-10), alpha=-self.lr * slot.lr_scale)


def test_an_optimizer_written_in_python():
    vector = ellipse.tensor([1.0, -2.0], requires_grad=True)
    matrix = ellipse.tensor(np.ones((2, 2)), requires_grad=True)
    idle = ellipse.tensor([5.0], requires_grad=True)
    optimizer = Adagrad([nn.ParamGroup([vector, idle]), nn.ParamGroup([matrix], lr_scale=0.5)], lr=0.1)
    assert (optimizer.name, optimizer.buffer_names) == ("Adagrad", ["sum_of_squares"])
    assert [(slot.lr_scale, slot.weight_decay) for slot in optimizer.slots()] == [(1.0, 0.0), (1.0, 0.0), (0.5, 0.01)]
    (ellipse.sum(vector * vector) + ellipse.sum(matrix * 0.0)).backward()
    optimizer.step()
    # vector: g = 2 p = [2, -4], so p moves by lr * g / |g|; matrix: g = 0.01 p alone, so p moves by lr * 0.5
    np.testing.assert_allclose(vector.numpy(), [0.9, -1.9], rtol=1e-6)
    np.testing.assert_allclose(matrix.numpy(), np.full((2, 2), 0.95), rtol=1e-6)
    np.testing.assert_array_equal(idle.numpy(), [5.0])  # no gradient: untouched
    np.testing.assert_allclose(optimizer.state()[0].numpy(), [4.0, 16.0], rtol=1e-6)
    assert optimizer.steps == 1
    nn.Optimizer.step(optimizer)  # the library's call goes through the C++ virtual to the Python step
    assert optimizer.steps == 2
    np.testing.assert_allclose(optimizer.state()[0].numpy(), [8.0, 32.0], rtol=1e-6)  # the same gradient again

    with pytest.raises(ellipse.Error, match=r"add_: in-place update of a tensor of shape \[2\] .* ellipse.no_grad\(\)"):
        vector.add_(vector)  # a parameter, outside ellipse.no_grad()

    class NoStep(nn.Optimizer):
        pass

    with pytest.raises(ellipse.Error, match="NoStep: a subclass of ellipse.nn.Optimizer defines step"):
        NoStep("NoStep", [vector], 0.1)
    with pytest.raises(ellipse.Error, match="Optimizer: a subclass of ellipse.nn.Optimizer defines step"):
        nn.Optimizer("Plain", [vector], 0.1)
    with pytest.raises(ellipse.Error, match="Optimizer.slots: only a Python subclass of ellipse.nn.Optimizer"):
        nn.SGD([vector]).slots()
    with pytest.raises(ellipse.Error, match="Mine: weight_decay must be a number or a function of the parameter"):
        Mine("Mine", [vector], 0.1, weight_decay="0.01")
    with pytest.raises(ellipse.Error, match="Mine: weight_decay.parameter. must return a number, got str"):
        Mine("Mine", [vector], 0.1, weight_decay=lambda p: "0.01")
    with pytest.raises(ellipse.Error, match="Mine: the default weight decay of a parameter of shape .2. is -1"):
        Mine("Mine", [vector], 0.1, weight_decay=-1)
    with pytest.raises(ellipse.Error, match="Optimizer: expected a name"):
        Mine("", [vector], 0.1)
    with pytest.raises(ellipse.Error, match="Mine: buffer names must be unique"):
        Mine("Mine", [vector], 0.1, ["m", "m"])


class Mine(nn.Optimizer):
    """An optimizer that never moves anything: for the constructor's checks."""

    def step(self):
        self.begin_step()


def train_with_the_library_loop(directory, end, resume, evaluate=None):
    """A Python layer and the Python Adagrad trained by models.run_train_loop for `end` of 12 steps in directory
    (resuming what is there when `resume`); returns the parameters and the (step, start_step) of each step."""
    ellipse.manual_seed(5)
    model = nn.Sequential([Residual(2, 8), nn.Linear(2, 1)])
    optimizer = Adagrad(model.parameters(), lr=0.05)
    run = models.RunCheckpoints(str(directory), "toy", "lr=0.05")
    data = ellipse.Generator(1)
    loop = models.TrainLoop()
    loop.end, loop.steps, loop.items_per_step = end, 12, 32
    train_loss = models.RunningMean()
    if resume:
        state = run.resume(model, optimizer)
        data.set_state(state.generators["data"])
        loop.start = state.step
        train_loss.load(state, "loss", run.files.state)
    else:
        run.start(json.dumps({"model": "residual"}))

    def loss(step):
        x = ellipse.randn([32, 2], gen=data)
        return ellipse.mean((model(x) - x[:, :1] * x[:, 1:]) ** 2)

    loop.learning_rate = lambda step: nn.warmup_cosine_lr(step, 2, 12, 0.05, 0.005)
    loop.loss = loss
    loop.evaluate_after = lambda done: done % 5 == 0
    loop.evaluate = evaluate or (lambda progress, mean: json.dumps({"step": progress.step, "train_loss": mean}))
    loop.state = lambda done: nn.TrainState(0, {"data": data.state()})
    steps = []
    loop.on_step = lambda progress: steps.append((progress.step, progress.start_step))
    models.run_train_loop(loop, model, optimizer, run, train_loss)
    return [p.numpy() for p in model.parameters()], steps


def test_the_library_loop_trains_and_resumes_python_code_exactly(tmp_path):
    straight, steps = train_with_the_library_loop(tmp_path / "whole", 12, False)
    assert steps == [(step, 0) for step in range(1, 13)]
    train_with_the_library_loop(tmp_path / "stopped", 7, False)  # stopped between evaluations
    resumed, steps = train_with_the_library_loop(tmp_path / "stopped", 12, True)
    assert steps == [(step, 7) for step in range(8, 13)]
    for a, b in zip(resumed, straight):
        np.testing.assert_array_equal(a, b)
    metrics = (tmp_path / "whole" / "metrics.jsonl").read_text()
    assert (tmp_path / "stopped" / "metrics.jsonl").read_text() == metrics
    assert [json.loads(line)["step"] for line in metrics.splitlines()] == [5, 10, 12]
    assert json.loads((tmp_path / "whole" / "config.json").read_text()) == {"model": "residual"}
    assert models.format_duration(62 * 60) == "1h02m"

    # A callback's exception comes back as it was raised; the library's checks name what is wrong.
    def failing(progress, mean):
        raise ValueError("no evaluation today")

    with pytest.raises(ValueError, match="no evaluation today"):
        train_with_the_library_loop(tmp_path / "failing", 12, False, failing)
    with pytest.raises(ellipse.Error, match="toy: a metrics line must be one line of JSON, an object whose \"step\""):
        train_with_the_library_loop(tmp_path / "epochs", 12, False, lambda progress, mean: '{"epoch": 1}')
    with pytest.raises(ellipse.Error, match="must all be set"):
        models.run_train_loop(models.TrainLoop(), nn.Linear(2, 1), nn.SGD(nn.Linear(2, 1).parameters()),
                              models.RunCheckpoints(str(tmp_path / "unset"), "toy"))


@pytest.mark.parametrize("make_optimizer", [lambda parameters: nn.SGD(parameters, lr=0.05, momentum=0.9),
                                            lambda parameters: Adagrad(parameters, lr=0.05)], ids=["SGD", "Adagrad"])
def test_train_state_resumes_exactly(tmp_path, make_optimizer):
    def build():
        ellipse.manual_seed(3)
        model = nn.Sequential([nn.Linear(4, 8), nn.Linear(8, 2)])
        return model, make_optimizer(model.parameters())


    def train(model, optimizer, gen, steps):
        for _ in range(steps):
            x = ellipse.randn([16, 4], gen=gen)
            optimizer.zero_grad()
            ellipse.mean((model(x) - x[:, :2]) ** 2).backward()
            optimizer.step()

    straight, straight_optimizer = build()
    train(straight, straight_optimizer, ellipse.Generator(1), 6)

    model, optimizer = build()
    data = ellipse.Generator(1)
    train(model, optimizer, data, 3)
    path = str(tmp_path / "train_state.safetensors")
    nn.save_train_state(path, model, optimizer, nn.TrainState(3, {"data": data.state()}, {"note": "halfway"}))
    resumed, resumed_optimizer = build()  # a fresh process, say
    state = nn.load_train_state(path, resumed, resumed_optimizer)
    assert (state.step, state.fields, resumed_optimizer.steps) == (3, {"note": "halfway"}, 3)
    resumed_data = ellipse.Generator(0)
    resumed_data.set_state(state.generators["data"])
    train(resumed, resumed_optimizer, resumed_data, 3)
    for a, b in zip(resumed.parameters(), straight.parameters()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    with pytest.raises(ellipse.Error, match=f"holds an {optimizer.name} optimizer's state, not one of AdamW"):
        nn.load_train_state(path, resumed, nn.AdamW(resumed.parameters()))


def test_forward_must_be_defined_and_registration_is_for_python_layers():
    class Empty(nn.Module):
        pass

    with pytest.raises(Exception, match="forward"):
        Empty()(ellipse.zeros([1]))
    with pytest.raises(ellipse.Error, match="only a Python subclass"):
        nn.Linear(2, 2).register_parameter("extra", ellipse.zeros([1]))


def test_schedule_and_sgd():
    assert nn.warmup_cosine_lr(0, 10, 100, 1.0, 0.1) == pytest.approx(0.1)  # step 0 is the first of the warm-up
    assert nn.warmup_cosine_lr(10, 10, 100, 1.0, 0.1) == pytest.approx(1.0)
    assert nn.warmup_cosine_lr(100, 10, 100, 1.0, 0.1) == pytest.approx(0.1)
    w = ellipse.tensor([1.0, -2.0], requires_grad=True)
    optimizer = nn.SGD([w], lr=0.5)
    assert (optimizer.name, optimizer.buffer_names) == ("SGD", [])  # no momentum, no buffers
    assert nn.SGD([w], lr=0.5, momentum=0.9).buffer_names == ["momentum_buffer"]
    ellipse.sum(w * w).backward()
    optimizer.step()
    np.testing.assert_allclose(w.numpy(), [0.0, 0.0])
    optimizer.lr = 0.1
    assert optimizer.lr == pytest.approx(0.1)


def test_forward_hooks_see_and_replace_outputs():
    layer = Residual(4, 8)
    model = nn.Sequential([layer, nn.Linear(4, 2)])
    seen = []
    hook = layer.add_forward_hook(lambda module, output: seen.append((module is layer, output.shape)))
    model(ellipse.zeros([3, 4]))
    assert seen == [(True, (3, 4))]
    layer.remove_forward_hook(hook)
    model.add_forward_hook(lambda module, output: output * 0)  # replaces the model's output
    assert ellipse.sum(ellipse.abs(model(ellipse.ones([3, 4])))).item() == 0
    with pytest.raises(ellipse.Error, match="remove_forward_hook"):
        layer.remove_forward_hook(hook)


def test_parameter_groups_scale_the_rate_and_set_the_decay():
    frozen, decayed, plain = (ellipse.tensor(np.ones(shape), requires_grad=True) for shape in [(2, 2), (3,), (2, 2)])
    # decayed is 1-D: AdamW's own rule would not decay it; its group decays it by 0.5
    optimizer = nn.AdamW([nn.ParamGroup([frozen], lr_scale=0.0), nn.ParamGroup([decayed], weight_decay=0.5),
                          nn.ParamGroup([plain])], lr=0.1, weight_decay=0.0)
    assert [p.shape for p in optimizer.parameters()] == [(2, 2), (3,), (2, 2)]
    sum(ellipse.sum(p * 0.0) for p in (frozen, decayed, plain)).backward()  # zero gradients: decay alone moves
    optimizer.lr = 0.2  # a schedule moves every group, keeping lr_scale
    optimizer.step()
    np.testing.assert_array_equal(frozen.numpy(), np.ones((2, 2)))
    np.testing.assert_allclose(decayed.numpy(), np.full(3, 1 - 0.2 * 0.5), rtol=1e-6)
    np.testing.assert_array_equal(plain.numpy(), np.ones((2, 2)))
    sgd = nn.SGD([nn.ParamGroup([plain], lr_scale=2.0)], lr=0.1)
    sgd.zero_grad()
    ellipse.sum(plain).backward()  # a gradient of ones
    sgd.step()
    np.testing.assert_allclose(plain.numpy(), np.full((2, 2), 1 - 0.2), rtol=1e-6)
    with pytest.raises(ellipse.Error, match="AdamW: parameters mix Tensors and ParamGroups"):
        nn.AdamW([plain, nn.ParamGroup([frozen])])
    with pytest.raises(ellipse.Error, match="SGD: expected Tensors or ParamGroups as parameters, got str"):
        nn.SGD(["weight"])
