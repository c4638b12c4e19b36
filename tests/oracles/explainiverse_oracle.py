"""Run in the explainiverse environment (scripts/explainiverse_venv.sh): explain small MLPs and a CNN with
explainiverse 0.8.1's LRPExplainer and with relprop's "explainiverse" composite, feature by feature, and print
how far apart they are (JSON: name -> relative L2 difference, or a bool for names and labels).

    .venv-explainiverse/bin/python -m tests.oracles.explainiverse_oracle     # from the repository root

explainiverse computes in float32 (it casts every instance), so relprop runs on the same float32 model; what is
left is float32 rounding.
"""
import json
import warnings

import numpy as np
import torch
from torch import nn

import relprop

RULES = ("epsilon", "gamma", "z_plus", "alpha_beta")
CLASSES = ["cat", "dog", "bird"]


def with_biases(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.normal_(0, 0.3)
    return model.eval()


def mlp():
    """Leaky activations hand negative inputs to the inner layers, where explainiverse's conventions differ."""
    torch.manual_seed(0)
    return with_biases(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.LeakyReLU(0.2), nn.Dropout(0.5),
                                     nn.Linear(8, 7), nn.Tanh(), nn.Linear(7, 3)), 1)


def cnn():
    torch.manual_seed(0)
    return with_biases(nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(3, 4, 3, stride=2), nn.ELU(), nn.Flatten(), nn.Linear(4, 5),
                                     nn.ReLU(), nn.Linear(5, 3)), 1)


MODELS = {
    "mlp": (mlp, (6,), {0: "z_plus", 2: "gamma", 5: "alpha_beta"}),
    "cnn": (cnn, (2, 6, 6), {0: "z_plus", 3: "gamma", 6: "alpha_beta"}),
}


def relative(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def explainers(model, feature_names, rule, layer_rules=None):
    from explainiverse.adapters import PyTorchAdapter
    from explainiverse.explainers.gradient.lrp import LRPExplainer

    adapter = PyTorchAdapter(model, task="classification", class_names=CLASSES)
    theirs = LRPExplainer(adapter, feature_names, class_names=CLASSES, rule=rule, epsilon=1e-6, gamma=0.25,
                          alpha=2.0, beta=1.0)
    if layer_rules is not None:
        theirs.set_composite_rule(layer_rules)
    ours = relprop.LRP(model, composite="explainiverse", rule=rule, epsilon=1e-6, gamma=0.25, alpha=2.0, beta=1.0,
                       layer_rules=layer_rules, canonizers=None, feature_names=feature_names, class_names=CLASSES)
    return theirs, ours


def compare_model(name, results):
    build, shape, layer_rules = MODELS[name]
    model = build()
    torch.manual_seed(5)
    x = torch.randn(4, *shape)
    feature_names = [f"f{i}" for i in range(int(np.prod(shape)))]
    targets = [0, 2, 1, 2]
    cases = [(rule, None) for rule in RULES] + [("composite", layer_rules)]
    for rule, rules_by_layer in cases:
        theirs, ours = explainers(model, feature_names, rule, rules_by_layer)
        key = f"{name}/{rule}"
        # explain(): attributions, convergence delta, feature names, class name
        expl = ours(x, target=targets)
        differences, deltas, labels = [], [], []
        for i, target in enumerate(targets):
            their = theirs.explain(x[i].numpy(), target_class=target, return_convergence_delta=True)
            data = their.explanation_data
            differences.append(relative(expl.relevance[i].flatten(), data["attributions_raw"]))
            deltas.append(relative([float(expl.explained[i]), float(expl.relevance_sum[i]), float(expl.delta[i].abs())],
                                   [data["target_output"], data["attribution_sum"], data["convergence_delta"]]))
            labels.append(list(data["feature_attributions"]) == expl.feature_labels()
                          and their.target_class == expl.target_names[i])
        results[f"{key}/explain"] = max(differences)
        results[f"{key}/convergence_delta"] = max(deltas)
        results[f"{key}/names"] = all(labels)
        # target None: the predicted class (class names given)
        predicted = ours(x)
        results[f"{key}/explain_predicted"] = max(
            relative(one.relevance.flatten(), theirs.explain(sample.numpy()).explanation_data["attributions_raw"])
            for one, sample in zip(predicted, x))
        # explain_batch(X, target_class): one call over the batch
        batch = theirs.explain_batch(x.numpy(), target_class=1)
        ours_batch = ours(x, target=1)
        results[f"{key}/explain_batch"] = max(
            relative(one.relevance.flatten(), their.explanation_data["attributions_raw"])
            for one, their in zip(ours_batch, batch))
        # explain_with_layer_relevances: relevance after each layer, i.e. at the output of the layer before it
        layered = theirs.explain_with_layer_relevances(x[0].numpy(), target_class=2)["layer_relevances"]
        names = [child for child, _ in model.named_children()]
        recorded = ours(x[:1], target=2, record=names)
        layer_differences = [relative(recorded.layers[names[-1]].flatten(), layered["output"])]
        for index, child in enumerate(names):
            at_input = recorded.relevance if index == 0 else recorded.layers[names[index - 1]]
            layer_differences.append(relative(at_input.flatten(), layered[f"layer_{index}_{child}"]))
        results[f"{key}/layer_relevances"] = max(layer_differences)
    # compare_rules: every rule on one instance, top feature by |relevance|
    theirs, _ = explainers(model, feature_names, "epsilon")
    compared = theirs.compare_rules(x[3].numpy(), target_class=0, rules=list(RULES))
    table = relprop.compare(model, x[3:], {rule: relprop.composites.get("explainiverse", rule=rule) for rule in RULES},
                            target=0, feature_names=feature_names, k=1, absolute=True, canonizers=None,
                            class_names=CLASSES, merge=False)
    differences, tops = [], []
    for row in table:
        their = compared[row["composite"]]
        (top_name, top_value), = row["top"]
        mine = table.explanations[row["composite"]].relevance[0].flatten()
        differences.append(relative(mine, their["attributions"]))
        differences.append(relative([row["relevance_sum"], top_value], [their["attribution_sum"],
                                                                        their["top_attribution"]]))
        tops.append(top_name == their["top_feature"] and row["class"] == "cat")
    results[f"{name}/compare_rules"] = max(differences)
    results[f"{name}/compare_rules_top"] = all(tops)


def whole_output(results):
    """No target and no class names: explainiverse starts from every output; relprop's target=lambda out: out."""
    from explainiverse.adapters import PyTorchAdapter
    from explainiverse.explainers.gradient.lrp import LRPExplainer

    model = mlp()
    x = torch.randn(2, 6)
    theirs = LRPExplainer(PyTorchAdapter(model, task="classification"), [f"f{i}" for i in range(6)], rule="epsilon")
    ours = relprop.explain(model, x, target=lambda out: out, composite="explainiverse", canonizers=None)
    results["mlp/whole_output"] = max(relative(ours.relevance[i], theirs.explain(x[i].numpy()).explanation_data[
        "attributions_raw"]) for i in range(len(x)))


def softmax_output(results):
    """A Softmax at the end: explainiverse starts from the probability and passes it through the softmax; relprop
    starts from the logit unless the target hands it the probability."""
    from explainiverse.adapters import PyTorchAdapter
    from explainiverse.explainers.gradient.lrp import LRPExplainer

    model = nn.Sequential(*mlp(), nn.Softmax(dim=1)).eval()
    x = torch.randn(3, 6)
    target = torch.tensor([2, 0, 1])
    theirs = LRPExplainer(PyTorchAdapter(model, task="classification", class_names=CLASSES),
                          [f"f{i}" for i in range(6)], class_names=CLASSES, rule="z_plus")
    one_hot = torch.nn.functional.one_hot(target, 3)
    ours = relprop.explain(model, x, target=lambda logits: torch.softmax(logits, 1) * one_hot,
                           composite="explainiverse", rule="z_plus", canonizers=None)
    results["mlp/softmax_output"] = max(relative(ours.relevance[i], theirs.explain(
        x[i].numpy(), target_class=int(target[i])).explanation_data["attributions_raw"]) for i in range(len(x)))


def main():
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    results = {}
    for name in MODELS:
        compare_model(name, results)
    whole_output(results)
    softmax_output(results)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
