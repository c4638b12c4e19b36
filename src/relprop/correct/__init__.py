"""Removing a shortcut the audit found: concept activation vectors (``cav``), the ClArC corrections (P-ClArC in
``clarc``; A-ClArC and RR-ClArC fine-tuning in ``finetune``) and the measures that verify them (``metrics``)."""
from .cav import (CAV, activations, cluster_samples, from_activations, from_concept, from_ids, from_inputs,
                  from_spray)
from .clarc import attach, directional_derivative, p_clarc, project
from .metrics import (accuracy, artifact_relevance, artifact_sensitivity, paste, poisoned_accuracy,
                      tcav_score)

__all__ = ["CAV", "activations", "cluster_samples", "from_activations", "from_ids", "from_inputs", "from_spray",
           "from_concept", "attach", "directional_derivative", "p_clarc", "project", "accuracy", "artifact_relevance",
           "artifact_sensitivity", "paste", "poisoned_accuracy", "tcav_score"]
