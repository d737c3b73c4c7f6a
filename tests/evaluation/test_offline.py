"""Offline evaluation: the held-out batches are drawn once and every call scores the same ones."""

import jax

from wallwm_jax.evaluation import offline
from wallwm_jax.evaluation.offline import OfflineEvaluator
from wallwm_jax.models import wallwm


def test_offline_evaluator_builds_its_pipeline_once(tiny_config, monkeypatch):
    """Rebuilding the pipeline at every evaluation re-read the dataset (and, with position
    targets, up to 1,000 training episodes for their statistics) each time."""
    builds = []
    real = offline.make_pipeline

    def counted(*args, **kwargs):
        builds.append(kwargs.get("split"))
        return real(*args, **kwargs)

    monkeypatch.setattr(offline, "make_pipeline", counted)
    tiny_config.batch_size = 8
    params = wallwm.init_params(tiny_config.model, jax.random.PRNGKey(0))
    evaluator = OfflineEvaluator(tiny_config, split="val", num_batches=2)
    first, second = evaluator(params), evaluator(params)
    assert builds == ["val"]
    assert first == second  # the same batches and noise: the same figures
    assert set(first) >= {"val/action_mse", "val/loss", "val/duration_acc", "val/caption_exact",
                          "val/caption_token_acc", "val/boundary_acc"}
