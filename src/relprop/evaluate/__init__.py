"""Measuring explanations: faithfulness, localisation, randomisation, robustness, complexity, axiomatic properties.

Every metric takes a batch x and its relevance (a relprop Explanation or a tensor shaped like x) and returns a
Result: one score per sample, a summary, curves where the metric has them, ``to_dataframe()``. Metrics that perturb
the input stream their copies through the model in forward passes of at most ``batch_size`` rows; pass one
``Runner`` as the model to several metrics to share the unperturbed forward pass between them. Nothing here
changes the model or the input. Formulas and references are in each family's module.
"""
from .axiomatic import completeness, input_invariance, non_sensitivity
from .complexity import complexity, effective_complexity, sparseness
from .faithfulness import (faithfulness_correlation, faithfulness_estimate, infidelity, irof, monotonicity,
                           noisy_linear_imputation, pixel_flipping, region_perturbation, road, selectivity,
                           sensitivity_n, sufficiency, superpixels)
from .localisation import (attribution_localisation, auc, focus, mosaic, pointing_game, relevance_mass_accuracy,
                           relevance_rank_accuracy, top_k_intersection)
from .randomisation import model_parameter_randomisation, random_logit
from .result import Result
from .robustness import avg_sensitivity, local_lipschitz_estimate, max_sensitivity
from .runner import Runner

__all__ = ["Result", "Runner", "pixel_flipping", "region_perturbation", "selectivity", "faithfulness_correlation",
           "faithfulness_estimate", "monotonicity", "sensitivity_n", "irof", "road", "noisy_linear_imputation",
           "superpixels", "infidelity", "sufficiency", "relevance_mass_accuracy", "relevance_rank_accuracy",
           "pointing_game", "attribution_localisation", "top_k_intersection", "auc", "focus", "mosaic", "model_parameter_randomisation",
           "random_logit", "max_sensitivity", "avg_sensitivity", "local_lipschitz_estimate", "sparseness",
           "complexity", "effective_complexity", "completeness", "input_invariance", "non_sensitivity"]

from .benchmark import Batch, BenchmarkResult, benchmark  # noqa: E402  (after the metrics it runs)

__all__ += ["benchmark", "Batch", "BenchmarkResult"]

from .batches import DemoImages, ImageFiles, StoreBatches  # noqa: E402

__all__ += ["DemoImages", "ImageFiles", "StoreBatches"]

# a model's dependence on an artifact, before and after a correction (relprop.correct, docs/how-to/clarc.md)
from ..correct.metrics import artifact_relevance, artifact_sensitivity, poisoned_accuracy, tcav_score  # noqa: E402

__all__ += ["artifact_relevance", "artifact_sensitivity", "poisoned_accuracy", "tcav_score"]
