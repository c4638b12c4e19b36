"""Recurrent layers: the step-by-step decomposition equals torch's fused ops, and LRP matches Arras et al. 2017."""
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode, resolve_name

import relprop
from relprop import rules
from relprop.attribution import DeepLift, Gradient, IntegratedGradients
from relprop.composites import Composite, Epsilon
from relprop.engine.steps import StepsOnGPU, gradients_through
from relprop.ops import recurrent

torch.set_num_threads(1)


class Decomposed(TorchFunctionMode):
    """Runs every recurrent op as relprop's plain decomposition."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = resolve_name(func) or ""
        if name in ("torch.lstm", "torch.gru", "torch.rnn_tanh", "torch.rnn_relu"):
            return recurrent.run(recurrent.bind_call(name, args, kwargs or {}))
        return func(*args, **(kwargs or {}))


CONFIGURATIONS = {
    "lstm 2 layers bidirectional": (nn.LSTM, dict(num_layers=2, bidirectional=True)),
    "lstm batch_first proj_size": (nn.LSTM, dict(num_layers=2, bidirectional=True, batch_first=True, proj_size=3)),
    "lstm no bias dropout": (nn.LSTM, dict(num_layers=3, bias=False, dropout=0.4)),
    "gru 2 layers bidirectional": (nn.GRU, dict(num_layers=2, bidirectional=True)),
    "gru batch_first": (nn.GRU, dict(batch_first=True)),
    "rnn tanh bidirectional": (nn.RNN, dict(bidirectional=True, num_layers=2)),
    "rnn relu": (nn.RNN, dict(nonlinearity="relu", batch_first=True)),
}


def _outputs(result):
    output, state = result
    output = output.data if isinstance(output, nn.utils.rnn.PackedSequence) else output
    return [output] + (list(state) if isinstance(state, tuple) else [state])


def _layer(config):
    cls, options = CONFIGURATIONS[config]
    torch.manual_seed(0)
    return cls(4, 5, **options).double().eval()


def _initial_state(layer, batch):
    directions = 2 if layer.bidirectional else 1
    h = torch.randn(layer.num_layers * directions, batch, layer.proj_size or layer.hidden_size, dtype=torch.double)
    if isinstance(layer, nn.LSTM):
        return h, torch.randn(layer.num_layers * directions, batch, layer.hidden_size, dtype=torch.double)
    return h


@pytest.mark.parametrize("config", list(CONFIGURATIONS))
@pytest.mark.parametrize("given_state", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_decomposition_equals_the_fused_op(config, given_state, packed):
    layer = _layer(config)
    x = torch.randn(3, 6, 4, dtype=torch.double)  # (batch, steps) or (steps, batch): three of one, six of the other
    if packed:
        lengths = torch.tensor([6, 2, 4]) if layer.batch_first else torch.tensor([3, 1, 2, 3, 3, 2])
        x = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=layer.batch_first, enforce_sorted=False)
    batch = 3 if layer.batch_first else 6
    args = (x, _initial_state(layer, batch)) if given_state else (x,)
    expected = _outputs(layer(*args))
    with Decomposed():
        got = _outputs(layer(*args))
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("config", list(CONFIGURATIONS))
def test_unbatched_input_decomposes_as_the_fused_op(config):
    layer = _layer(config)
    x = torch.randn(6, 4, dtype=torch.double)
    expected = _outputs(layer(x))
    with Decomposed():
        got = _outputs(layer(x))
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want, rtol=1e-12, atol=1e-12)


CELLS = {"lstm cell": (nn.LSTMCell, {}), "gru cell without bias": (nn.GRUCell, dict(bias=False)),
         "rnn relu cell": (nn.RNNCell, dict(nonlinearity="relu"))}


@pytest.mark.parametrize("config", list(CELLS))
def test_cell_decomposition_equals_the_fused_cell(config):
    cls, options = CELLS[config]
    torch.manual_seed(0)
    cell = cls(4, 5, **options).double()
    x, h = torch.randn(3, 4, dtype=torch.double), torch.randn(3, 5, dtype=torch.double)
    state = (h, torch.randn(3, 5, dtype=torch.double)) if cls is nn.LSTMCell else h
    for args in ((x,), (x, state), (x[0],)):
        expected = cell(*args)
        with Decomposed():
            got = cell(*args)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


class CellLoop(nn.Module):
    """The same LSTM as a loop over nn.LSTMCell, as models with attention or custom steps write it."""

    def __init__(self, layer):
        super().__init__()
        self.cell = nn.LSTMCell(layer.input_size, layer.hidden_size)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.cell, name).copy_(getattr(layer, name + "_l0"))
        self.head = nn.Linear(layer.hidden_size, 2)

    def forward(self, x):
        state = None
        for step in x.unbind(1):
            state = self.cell(step, state)
        return self.head(state[0])


class Layer(nn.Module):
    def __init__(self, layer, head):
        super().__init__()
        self.layer, self.head = layer, head

    def forward(self, x):
        return self.head(self.layer(x)[1][0][-1])


def test_a_loop_over_an_lstm_cell_gets_the_layers_relevance():
    torch.manual_seed(10)
    layer = nn.LSTM(3, 4, batch_first=True).double()
    looped = CellLoop(layer).double().eval()
    whole = Layer(layer, looped.head).eval()
    x = torch.randn(2, 5, 3, dtype=torch.double)
    torch.testing.assert_close(looped(x), whole(x))
    cell = relprop.LRP(looped, Epsilon(0.01), strict=True)(x, 1)
    full = relprop.LRP(whole, Epsilon(0.01), strict=True)(x, 1)
    torch.testing.assert_close(cell.relevance, full.relevance, rtol=1e-10, atol=1e-12)


# ---- Arras et al. 2017, written from the paper's equations (numpy, float64, one sample at a time) ---------------
def lrp_linear(inputs, weight, bias, outputs, relevance, epsilon):
    """Epsilon rule, biases absorbed: R_i = sum_j x_i w_ij R_j / (z_j + eps sign z_j), with z = x w + b."""
    denominator = outputs + epsilon * np.where(outputs >= 0, 1.0, -1.0)
    return (inputs[:, None] * weight * (relevance / denominator)[None, :]).sum(1)


def lstm_direction_reference(x, w_ih, w_hh, b_ih, b_hh, reverse, relevance_h, epsilon):
    """One LSTM direction: its hidden states, and the relevance of its inputs given relevance on every h_t."""
    steps, hidden = len(x), w_hh.shape[1]
    order = list(reversed(range(steps))) if reverse else list(range(steps))
    h = {None: np.zeros(hidden)}
    c = {None: np.zeros(hidden)}
    gates, pre = {}, {}
    previous = None
    for t in order:
        z = w_ih @ x[t] + b_ih + w_hh @ h[previous] + b_hh
        i, f = 1 / (1 + np.exp(-z[:hidden])), 1 / (1 + np.exp(-z[hidden:2 * hidden]))
        g, o = np.tanh(z[2 * hidden:3 * hidden]), 1 / (1 + np.exp(-z[3 * hidden:]))
        c[t] = f * c[previous] + i * g
        h[t] = o * np.tanh(c[t])
        gates[t], pre[t] = (i, f, g, o, previous), z[2 * hidden:3 * hidden]
        previous = t
    relevance_x = np.zeros_like(x)
    rel_h = {t: relevance_h[t].copy() for t in order}
    rel_h[None] = np.zeros(hidden)
    rel_c = {t: np.zeros(hidden) for t in order}
    rel_c[None] = np.zeros(hidden)
    weight_x, weight_h = w_ih[2 * hidden:3 * hidden].T, w_hh[2 * hidden:3 * hidden].T
    bias = b_ih[2 * hidden:3 * hidden] + b_hh[2 * hidden:3 * hidden]
    identity = np.eye(hidden)
    for t in reversed(order):
        i, f, g, o, prev = gates[t]
        rel_c[t] += rel_h[t]  # h = o tanh(c): the gate o is a constant, tanh passes relevance through
        rel_c[prev] += lrp_linear(f * c[prev], identity, 0, c[t], rel_c[t], epsilon)
        rel_g = lrp_linear(i * g, identity, 0, c[t], rel_c[t], epsilon)
        relevance_x[t] = lrp_linear(x[t], weight_x, bias, pre[t], rel_g, epsilon)
        rel_h[prev] += lrp_linear(h[prev], weight_h, bias, pre[t], rel_g, epsilon)
    return np.stack([h[t] for t in range(steps)]), relevance_x


def bidirectional_reference(model, x, target, epsilon):
    """Relevance of x (steps, features) for the logit ``target`` of the classifier below."""
    lstm, head = model.lstm, model.head
    params = {name: p.detach().numpy() for name, p in lstm.named_parameters()}
    hidden = lstm.hidden_size
    inputs, states = [x], []
    for layer in range(lstm.num_layers):
        outs = []
        for suffix, reverse in (("", False), ("_reverse", True)):
            key = f"l{layer}{suffix}"
            zero = np.zeros((len(x), hidden))
            h, _ = lstm_direction_reference(inputs[-1], params[f"weight_ih_{key}"], params[f"weight_hh_{key}"],
                                            params[f"bias_ih_{key}"], params[f"bias_hh_{key}"], reverse, zero, 0)
            outs.append(h)
        states.append(outs)
        inputs.append(np.concatenate(outs, 1))
    top_forward, top_reverse = states[-1][0][-1], states[-1][1][0]
    features = np.concatenate([top_forward, top_reverse])
    weight, bias = head.weight.detach().numpy(), head.bias.detach().numpy()
    logits = weight @ features + bias
    relevance_out = np.zeros_like(logits)
    relevance_out[target] = logits[target]
    relevance = lrp_linear(features, weight.T, bias, logits, relevance_out, epsilon)
    # relevance on every output h_t of the layer above, per direction
    steps = len(x)
    on_h = [np.zeros((steps, hidden)), np.zeros((steps, hidden))]
    on_h[0][-1], on_h[1][0] = relevance[:hidden], relevance[hidden:]
    for layer in reversed(range(lstm.num_layers)):
        relevance_in = np.zeros_like(inputs[layer])
        for direction, (suffix, reverse) in enumerate((("", False), ("_reverse", True))):
            key = f"l{layer}{suffix}"
            _, part = lstm_direction_reference(inputs[layer], params[f"weight_ih_{key}"], params[f"weight_hh_{key}"],
                                               params[f"bias_ih_{key}"], params[f"bias_hh_{key}"], reverse,
                                               on_h[direction], epsilon)
            relevance_in += part
        on_h = [relevance_in[:, :hidden], relevance_in[:, hidden:]]
    return relevance_in


class Classifier(nn.Module):
    """A bidirectional LSTM read at both ends (Arras et al.'s sentiment model), then a linear layer."""

    def __init__(self, cell=nn.LSTM, features=3, hidden=6, classes=3, layers=2):
        super().__init__()
        self.lstm = cell(features, hidden, num_layers=layers, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, x):
        _, state = self.lstm(x)
        h = state[0] if isinstance(state, tuple) else state
        return self.head(torch.cat([h[-2], h[-1]], 1))


def _task(count, generator):
    """Which third of the sequence holds the largest sum of feature 0 (a task that needs memory both ways)."""
    x = torch.randn(count, 9, 3, generator=generator)
    label = x[:, :, 0].reshape(count, 3, 3).sum(2).argmax(1)
    return x, label


@pytest.fixture(scope="module")
def trained():
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = Classifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(250):
        x, label = _task(32, generator)
        loss = nn.functional.cross_entropy(model(x), label)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, label = _task(200, generator)
    accuracy = float((model(x).argmax(1) == label).double().mean())
    return model.double().eval(), accuracy, generator


@pytest.mark.parametrize("epsilon", [1e-3, 0.1])
def test_lstm_relevance_matches_arras_reference_on_a_trained_bidirectional_lstm(trained, epsilon):
    model, accuracy, generator = trained
    assert accuracy > 0.6  # it learned the task: its weights are realistic, not random
    x = _task(4, generator)[0].double()
    explanation = relprop.LRP(model, Epsilon(epsilon), strict=True)(x)
    for sample in range(len(x)):
        expected = bidirectional_reference(model, x[sample].numpy(), int(explanation.target[sample]), epsilon)
        np.testing.assert_allclose(explanation.relevance[sample].numpy(), expected, rtol=1e-10, atol=1e-12)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def gru_or_rnn_reference(layer, head, x, target, epsilon):
    """Relevance of x (steps, features) for logit ``target`` of head(h_T), one GRU or tanh-RNN layer, from the
    equations: gates constant, tanh passing relevance through, the update sum and the pre-activations by epsilon."""
    w_ih, w_hh = layer.weight_ih_l0.detach().numpy(), layer.weight_hh_l0.detach().numpy()
    b_ih, b_hh = layer.bias_ih_l0.detach().numpy(), layer.bias_hh_l0.detach().numpy()
    hidden, gru = w_hh.shape[1], isinstance(layer, nn.GRU)
    hs, saved = [np.zeros(hidden)], []
    for x_t in x:
        h = hs[-1]
        if gru:
            gx, gh = w_ih @ x_t + b_ih, w_hh @ h + b_hh
            r, z = _sigmoid(gx[:hidden] + gh[:hidden]), _sigmoid(gx[hidden:2 * hidden] + gh[hidden:2 * hidden])
            a = gx[2 * hidden:] + r * gh[2 * hidden:]
            n = np.tanh(a)
            hs.append((1 - z) * n + z * h)
            saved.append((r, z, a, n))
        else:
            a = w_ih @ x_t + b_ih + w_hh @ h + b_hh
            hs.append(np.tanh(a))
            saved.append((None, None, a, None))
    weight, bias = head.weight.detach().numpy(), head.bias.detach().numpy()
    logits = weight @ hs[-1] + bias
    relevance_out = np.zeros_like(logits)
    relevance_out[target] = logits[target]
    rel_h = lrp_linear(hs[-1], weight.T, bias, logits, relevance_out, epsilon)
    relevance_x = np.zeros_like(x)
    identity = np.eye(hidden)
    for t in reversed(range(len(x))):
        r, z, a, n = saved[t]
        h = hs[t]
        if gru:
            rel_a = lrp_linear((1 - z) * n, identity, 0, hs[t + 1], rel_h, epsilon)  # tanh passes it through
            rel_previous = lrp_linear(z * h, identity, 0, hs[t + 1], rel_h, epsilon)
            w_x, w_h = w_ih[2 * hidden:], r[:, None] * w_hh[2 * hidden:]  # the reset gate scales W_hn
        else:
            rel_a, rel_previous = rel_h, 0
            w_x, w_h = w_ih, w_hh
        relevance_x[t] = lrp_linear(x[t], w_x.T, 0, a, rel_a, epsilon)
        rel_h = rel_previous + lrp_linear(h, w_h.T, 0, a, rel_a, epsilon)
    return relevance_x


class LastState(nn.Module):
    def __init__(self, cell):
        super().__init__()
        torch.manual_seed(8)
        self.rnn = cell(3, 5, batch_first=True)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[1][-1])


@pytest.mark.parametrize("cell", [nn.GRU, nn.RNN])
def test_gru_and_rnn_relevance_match_their_equations(cell):
    model = LastState(cell).double().eval()
    x = torch.randn(3, 6, 3, dtype=torch.double)
    explanation = relprop.LRP(model, Epsilon(0.01), strict=True)(x)
    for sample in range(len(x)):
        expected = gru_or_rnn_reference(model.rnn, model.head, x[sample].numpy(), int(explanation.target[sample]),
                                        0.01)
        np.testing.assert_allclose(explanation.relevance[sample].numpy(), expected, rtol=1e-10, atol=1e-12)


def _without_warnings(explain, *args):
    """explain(*args), with any warning (an unsupported op, say) raised as an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return explain(*args)


def _without_biases(model):
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "bias" in name:
                parameter.zero_()
    return model


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_relevance_is_conserved_without_biases_and_epsilon(cell):
    torch.manual_seed(1)
    model = _without_biases(Classifier(cell)).double().eval()
    x = torch.randn(3, 7, 3, dtype=torch.double)
    explanation = relprop.LRP(model, Epsilon(0.0), strict=True)(x)
    torch.testing.assert_close(explanation.relevance.sum((1, 2)), explanation.explained, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_zero_bias_hands_the_biases_share_to_the_inputs_so_relevance_is_conserved(cell):
    torch.manual_seed(9)
    model = Classifier(cell).double().eval()
    x = torch.randn(3, 7, 3, dtype=torch.double)
    explanation = relprop.LRP(model, Epsilon(0.0, zero_bias=True), strict=True)(x)
    torch.testing.assert_close(explanation.relevance.sum((1, 2)), explanation.explained, rtol=1e-9, atol=1e-12)


def test_zero_bias_in_float32_gives_the_float64_relevance_and_conserves_it_up_to_rounding_of_its_parts():
    # epsilon=0, zero_bias=True conserves relevance exactly in exact arithmetic, but bias-free denominators
    # W_x x + W_h h near zero make some shares huge and cancelling: here the input's |relevance| sums to 8e3 to 3e7
    # times the explained output. Run in float32, the steps gave each relevance value with an error of 0.2% of the
    # largest (float32 rounding of those denominators); in float64 only the final rounding to float32 remains.
    torch.manual_seed(0)
    model = Classifier(nn.LSTM, features=8, hidden=16).eval()  # 2 layers, bidirectional, batch_first
    x = torch.randn(4, 20, 8)
    composite = Epsilon(0.0, zero_bias=True)
    single = relprop.LRP(model, composite, strict=True)(x)
    wide = relprop.LRP(Classifier(nn.LSTM, features=8, hidden=16).double().eval(), composite, strict=True)
    wide.model.load_state_dict(model.state_dict())
    double = wide(x.double())
    assert single.relevance.dtype == torch.float32 and single.output.dtype == torch.float32
    largest = double.relevance.abs().amax((1, 2))
    # Each value is the float64 one rounded to float32 (6e-8 of itself) after the float32 head: measured 7e-7 of the
    # largest; 1e-5 leaves 14x room and fails the float32 steps by 200x.
    assert bool(((single.relevance.double() - double.relevance).abs().amax((1, 2)) <= 1e-5 * largest).all())
    # What holds of delta: the float32 sum of huge cancelling parts is exact to a few float32 roundings of their
    # total |relevance| (measured 0.2 of one, 0.6 with the float32 steps), not to a share of explained.
    magnitude = double.relevance.abs().sum((1, 2))
    assert bool((magnitude > 1e3 * double.explained.abs()).all())
    assert bool((double.delta.abs() <= 4 * torch.finfo(torch.float64).eps * magnitude).all())
    assert bool((single.delta.double().abs() <= 4 * torch.finfo(torch.float32).eps * magnitude).all())


def test_only_biases_lose_relevance():
    torch.manual_seed(2)
    model = Classifier().double().eval()
    x = torch.randn(3, 7, 3, dtype=torch.double)
    with_biases = relprop.LRP(model, Epsilon(0.0))(x)
    assert float(with_biases.delta.abs().max()) > 1e-6  # biases take their share
    assert float(relprop.LRP(_without_biases(model), Epsilon(0.0))(x).delta.abs().max()) < 1e-10


def test_zero_bias_leaves_biases_out_of_the_denominators():
    torch.manual_seed(3)
    layer = nn.RNN(2, 3).double()
    x = torch.randn(1, 1, 2, dtype=torch.double)  # one step from h0 = 0: a single epsilon layer

    class First(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = layer

        def forward(self, x):
            return self.rnn(x)[0][0]

    model = First()
    explanation = relprop.LRP(model, Composite(layer_map={nn.RNN: rules.Epsilon(0.0, zero_bias=True)}))(x, 0)
    w, b = layer.weight_ih_l0.detach()[0], (layer.bias_ih_l0 + layer.bias_hh_l0).detach()[0]
    z = w @ x[0, 0] + b
    expected = x[0, 0] * w * (torch.tanh(z) / (w @ x[0, 0]))  # R = tanh(z) split by x_i w_i / (W x), b left out
    torch.testing.assert_close(explanation.relevance[0, 0], expected, rtol=1e-10, atol=1e-12)


class Packing(nn.Module):
    """Packs a padded batch by its lengths (the usual text classifier) before the recurrent layer."""

    def __init__(self, cell):
        super().__init__()
        self.rnn = cell(3, 5, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(10, 2)

    def forward(self, x):
        lengths = torch.tensor([x.shape[1], x.shape[1] - 2, 3]).repeat(len(x))[: len(x)]
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        output, _ = self.rnn(packed)
        padded, _ = nn.utils.rnn.pad_packed_sequence(output, batch_first=True)
        return self.head(padded.mean(1))


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_packed_sequences_explain_strictly_and_leave_padding_without_relevance(cell):
    torch.manual_seed(4)
    model = Packing(cell).double().eval()
    x = torch.randn(3, 6, 3, dtype=torch.double)
    explanation = _without_warnings(relprop.LRP(model, Epsilon(1e-6), strict=True), x)
    assert torch.all(explanation.relevance[1, 4:] == 0) and torch.all(explanation.relevance[2, 3:] == 0)
    assert torch.all(explanation.relevance[0, 5] != 0)


@pytest.mark.parametrize("config", list(CONFIGURATIONS))
def test_every_configuration_explains_strictly_without_warnings_and_leaves_the_model_unchanged(config):
    layer = _layer(config)
    state = {key: value.clone() for key, value in layer.state_dict().items()}

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = layer

        def forward(self, x):
            output = self.rnn(x if layer.batch_first else x.transpose(0, 1))[0]
            return (output if layer.batch_first else output.transpose(0, 1)).sum(1)

    x = torch.randn(2, 5, 4, dtype=torch.double)
    report = _without_warnings(relprop.LRP(Model(), Epsilon(1e-6), strict=True).report, x)
    assert any(row.rule.startswith("Recurrent (Arras") for row in report.rows)
    for key, value in layer.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not layer.training


def test_a_rule_without_a_recurrent_form_is_an_error_naming_the_fix():
    model = Classifier().double().eval()
    with pytest.raises(TypeError, match="layer_map"):
        relprop.LRP(model, Composite(layer_map={nn.LSTM: rules.Gamma(0.25)}))(torch.randn(1, 4, 3).double())



def test_any_rule_splitting_the_plain_contributions_runs_on_recurrent_layers_as_its_epsilon():
    class Shrunk(rules.LinearRule):
        """LRP-0's terms with a stabilizer of its own: no recurrent code knows this class."""

        stabilizer, zero_bias = 0.05, True

        def groups(self):
            return rules.PLAIN_CONTRIBUTIONS

    torch.manual_seed(3)
    model, x = Classifier().double().eval(), torch.randn(2, 5, 3, dtype=torch.double)

    def relevance(rule):
        return relprop.LRP(model, Composite(layer_map={nn.LSTM: rule}), strict=True)(x, 1).relevance

    torch.testing.assert_close(relevance(Shrunk()), relevance(rules.Epsilon(0.05, zero_bias=True)))
    torch.testing.assert_close(relevance(rules.Norm()), relevance(rules.Epsilon(1e-6, zero_bias=True)))

@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_deeplift_adds_up_on_recurrent_layers(cell):
    torch.manual_seed(5)
    model = Classifier(cell).double().eval()
    x = torch.randn(3, 6, 3, dtype=torch.double)
    explanation = _without_warnings(DeepLift(model), x)
    assert float((explanation.delta.abs() / explanation.explained.abs()).max()) <= 1e-4


def test_deeplift_warns_on_packed_sequences_whose_sorting_breaks_its_pairing():
    torch.manual_seed(5)
    model = Packing(nn.LSTM).double().eval()
    with pytest.warns(relprop.UnsupportedOpWarning, match="packed"):
        DeepLift(model, baseline=torch.zeros(3, 6, 3, dtype=torch.double))(torch.randn(3, 6, 3, dtype=torch.double))


def test_gradient_and_integrated_gradients_run_and_agree_with_autograd():
    torch.manual_seed(6)
    model = Classifier(nn.GRU).double().eval()
    x = torch.randn(2, 6, 3, dtype=torch.double)
    leaf = x.clone().requires_grad_(True)
    model(leaf)[:, 0].sum().backward()
    torch.testing.assert_close(Gradient(model)(x, 0).relevance, leaf.grad)
    integrated = IntegratedGradients(model, steps=64)(x, 0)
    assert float((integrated.delta.abs() / integrated.explained.abs()).max()) < 1e-3


def test_steps_give_the_fused_ops_gradient_to_input_and_parameters():
    torch.manual_seed(7)
    model = Classifier(nn.LSTM).double().eval()
    x = torch.randn(2, 6, 3, dtype=torch.double)
    fused = torch.autograd.grad(model(x.requires_grad_(True))[:, 1].sum(), [x, *model.parameters()])
    with StepsOnGPU(everywhere=True):
        steps = torch.autograd.grad(model(x)[:, 1].sum(), [x, *model.parameters()])
    for want, have in zip(fused, steps):
        torch.testing.assert_close(have, want, rtol=1e-10, atol=1e-12)
    assert isinstance(gradients_through(model), StepsOnGPU)
    assert not isinstance(gradients_through(nn.Linear(2, 2)), StepsOnGPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cuDNN needs a GPU")
def test_gradients_through_a_cudnn_lstm_in_eval_mode_work():
    model = Classifier(nn.LSTM).cuda().eval()
    x = torch.randn(2, 6, 3, device="cuda")
    assert torch.isfinite(Gradient(model)(x, 0).relevance).all()
    assert torch.isfinite(IntegratedGradients(model, steps=8)(x, 0).relevance).all()
    assert torch.isfinite(relprop.LRP(model, "epsilon")(x, 0).relevance).all()
