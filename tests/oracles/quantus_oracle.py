"""Run in the Quantus environment (scripts/quantus_venv.sh): compute the metrics that Quantus 0.6 and
relprop.evaluate both define on the same model, inputs, relevance and baseline, and print how far apart they are
(JSON: metric -> largest absolute difference), plus what Quantus's ROAD returns.

    .venv-quantus/bin/python -m tests.oracles.quantus_oracle      # from the repository root

Quantus is called with normalise=False and abs=False (relprop never rescales relevance behind the user's back) and
with relevance pooled over channels to (N, 1, H, W), which Quantus broadcasts over the channels; steps of C values
of the broadcast relevance are whole pixels, relprop's locations. Quantus's curves leave out the unperturbed point
that relprop's curves start with; region perturbation reports f(x) - f(x^(k)) where relprop reports f(x^(k)).
"""
import json
import warnings

import numpy as np
import torch

import relprop
from relprop import evaluate

warnings.filterwarnings("ignore")


def model_and_data(count=4, size=24, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(8 * (size // 2) ** 2, 5)).eval()
    with torch.no_grad():
        for module in model:
            if getattr(module, "bias", None) is not None:
                module.bias.normal_(0, 0.2)
    x = torch.rand(count, 3, size, size)
    target = model(x).argmax(1)
    explanation = relprop.explain(model, x, target=target, composite="epsilon")
    masks = torch.zeros(count, size, size, dtype=torch.bool)
    for n in range(count):
        masks[n, 2 + n:8 + n, 3:9 + n] = True
    return model, x, target, explanation.relevance, masks


def one_channel(x, classes=5, seed=1):
    """A linear classifier of single-channel images, whose decisions do change as pixels are imputed."""
    torch.manual_seed(seed)
    gray = x[:, :1].contiguous()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(gray[0].numel(), classes)).eval()
    return model, gray


def compare(model, x, target, relevance, masks):
    import quantus

    pooled = relevance.sum(1, keepdim=True)
    x_np, y_np, a_np, s_np = x.numpy(), target.numpy(), pooled.detach().numpy(), masks[:, None].numpy().astype(float)
    channels = x.shape[1]
    common = dict(normalise=False, abs=False, disable_warnings=True)

    def call(metric, **options):
        return np.asarray(metric(model=model, x_batch=x_np, y_batch=y_np, a_batch=a_np, s_batch=s_np, device="cpu",
                                 channel_first=True, **options), dtype=np.float64)

    gaps, notes = {}, {}

    def gap(name, quantus_values, relprop_values):
        gaps[name] = float(np.max(np.abs(np.asarray(quantus_values, dtype=np.float64)
                                          - np.asarray(relprop_values, dtype=np.float64))))

    out = call(quantus.PixelFlipping(features_in_step=channels * 16, perturb_baseline="black", **common),
               softmax=True)
    mine = evaluate.pixel_flipping(model, x, relevance, target, regions_per_step=16, softmax=True)
    gap("pixel_flipping", out, mine.curves["morf"][:, 1:])
    for order in ("morf", "lerf"):
        out = call(quantus.RegionPerturbation(patch_size=4, order=order, regions_evaluation=36,
                                              perturb_baseline="black", **common), softmax=True)
        mine = evaluate.region_perturbation(model, x, relevance, target, patch_size=4, order=order, softmax=True)
        gap(f"region_perturbation_{order}", out, mine.curves[order][:, :1] - mine.curves[order][:, 1:])
    out = call(quantus.Selectivity(patch_size=4, perturb_baseline="black", **common), softmax=True)
    gap("selectivity", out, evaluate.selectivity(model, x, relevance, target, patch_size=4,
                                                 softmax=True).curves["morf"][:, 1:])
    out = call(quantus.FaithfulnessEstimate(features_in_step=channels * 8, perturb_baseline="black", **common),
               softmax=False)
    gap("faithfulness_estimate", out, evaluate.faithfulness_estimate(model, x, relevance, target,
                                                                     features_in_step=8).scores)
    # Quantus 0.6's Monotonicity writes the baseline into the all-baseline input instead of restoring x's values, so
    # its curve is flat and every sample passes: reported as a note, relprop's is checked against the formula
    out = call(quantus.Monotonicity(features_in_step=channels * 16, perturb_baseline="black", normalise=False, abs=True,
                                    disable_warnings=True), softmax=True)
    notes["quantus_monotonicity"] = out.tolist()
    notes["relprop_monotonicity"] = evaluate.monotonicity(model, x, relevance, target, features_in_step=16,
                                                          softmax=True).scores.tolist()
    # Quantus's IROF hands a (N, 1, H, W) mask to a perturbation that asserts it is shaped like x, and its "black"
    # is the minimum over the whole batch there: broadcast the mask, and remove to 0.0
    def broadcast_mask(arr, mask, **options):
        return quantus.functions.perturb_func.baseline_replacement_by_mask(arr, np.broadcast_to(mask, arr.shape),
                                                                            **options)

    out = call(quantus.IROF(perturb_func=broadcast_mask, perturb_baseline=0.0, return_aggregate=False, **common),
               softmax=True)
    mine = evaluate.irof(model, x, relevance, target, baseline=0.0, softmax=True)
    counts = mine.details["segments"].long().tolist()
    # Quantus's aggregate: L - trapezoid(f(x^(k)) / f(x), k = 1..L, dx=1), from relprop's curve
    # (Quantus pads the curves of samples with fewer segments with zeros before the trapezoid, so those samples
    # lose half their last point: the formula below does the same)
    padded = [np.concatenate([mine.curves["morf"][n, 1:count + 1].numpy(), np.zeros(max(counts) - count)])
              for n, count in enumerate(counts)]
    quantus_formula = [count - np.trapz(curve) for curve, count in zip(padded, counts)]
    gap("irof", out, quantus_formula)
    out = call(quantus.Sufficiency(threshold=0.6, distance_func="seuclidean", **common), softmax=True)
    gap("sufficiency", out, evaluate.sufficiency(model, x, pooled.expand_as(x) / channels, target,
                                                 distance="seuclidean").scores)

    gap("relevance_mass_accuracy", call(quantus.RelevanceMassAccuracy(**common)),
        evaluate.relevance_mass_accuracy(x, relevance, masks, pooling="sum").scores)
    gap("relevance_rank_accuracy", call(quantus.RelevanceRankAccuracy(**common)),
        evaluate.relevance_rank_accuracy(x, relevance, masks, pooling="sum").scores)
    gap("pointing_game", call(quantus.PointingGame(**common)), evaluate.pointing_game(x, relevance, masks).scores)
    # Quantus divides by (total + 1e-9); its weighted form multiplies by |mask| / |image| instead of the inverse
    gap("attribution_localisation", call(quantus.AttributionLocalisation(positive_attributions=True, **common)),
        evaluate.attribution_localisation(x, relevance, masks).scores)
    gap("top_k_intersection", call(quantus.TopKIntersection(k=20, **common)),
        evaluate.top_k_intersection(x, relevance, masks, k=20).scores)
    gap("auc", call(quantus.AUC(**common)), evaluate.auc(x, relevance, masks).scores)
    # Focus on the inputs as mosaics (one row of quadrant flags each); Quantus's evaluate_batch also runs on
    # non-square relevance, which its __call__ cannot feed through this square model
    quadrants = [[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 1, 0, 1]][:len(x)]
    gap("focus", call(quantus.Focus(**common), custom_batch=quadrants),
        evaluate.focus(x, relevance, quadrants).scores)
    wide = torch.randn(len(x), 1, 10, 15, generator=torch.Generator().manual_seed(3))
    gap("focus_non_square", quantus.Focus(**common).evaluate_batch(a_batch=wide.numpy(), c_batch=quadrants),
        evaluate.focus(wide, wide, quadrants).scores)

    magnitudes = dict(normalise=False, abs=True, disable_warnings=True)
    # Quantus adds 1e-7 to every |R| before the Gini index: relprop gets the same magnitudes
    shifted = pooled.abs() + 1e-7
    gap("sparseness", call(quantus.Sparseness(**magnitudes)), evaluate.sparseness(shifted, shifted).scores)
    gap("complexity", call(quantus.Complexity(**magnitudes)), evaluate.complexity(x, relevance).scores)
    gap("effective_complexity", call(quantus.EffectiveComplexity(eps=1e-3, **magnitudes)),
        evaluate.effective_complexity(x, relevance, eps=1e-3).scores)

    # Quantus's ROAD indexes pixels with indices into the channel-broadcast relevance, so it runs only on
    # single-channel images: its check runs on the first channel, with a model for one channel
    gray_model, gray = one_channel(x)
    gray_target = gray_model(gray).argmax(1)
    gray_relevance = relprop.explain(gray_model, gray, target=gray_target, composite="epsilon").relevance
    road = quantus.ROAD(noise=0.0, percentages=[10, 30, 50, 70, 90], **common)
    road_scores = road(model=gray_model, x_batch=gray.numpy(), y_batch=gray_target.numpy(),
                       a_batch=gray_relevance.detach().numpy(), device="cpu", channel_first=True)
    removed = torch.zeros(gray[0, 0].numel(), dtype=torch.bool)
    removed[torch.randperm(removed.numel(), generator=torch.Generator().manual_seed(0))[:removed.numel() // 3]] = True
    theirs = quantus.functions.perturb_func.noisy_linear_imputation(
        arr=gray[0].double().numpy(), indices=removed.nonzero().flatten().numpy(), noise=0.0)
    ours = evaluate.noisy_linear_imputation(gray[:1].double(), removed.view(1, *gray.shape[2:]), noise=0.0)
    gap("noisy_linear_imputation", theirs, ours[0].numpy())
    notes["quantus_road"] = {str(k): float(v) for k, v in dict(road_scores).items()}
    notes["relprop_road"] = evaluate.road(gray_model, gray, gray_relevance, gray_target, percentages=(10, 30, 50, 70, 90),
                                          noise=0.0).curves["accuracy"].mean(0).tolist()
    return gaps, notes


if __name__ == "__main__":
    gaps, notes = compare(*model_and_data())
    print(json.dumps({"gaps": gaps, "notes": notes}))
