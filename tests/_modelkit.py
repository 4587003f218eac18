"""What the simulator-model tests share: array aliases, two small model configurations, a model with non-zero LoRA."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from tinkex_trio.sim._model import LoraModel
from tinkex_trio.sim._model_types import ModelConfig

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

TINY = ModelConfig(vocab_size=7, hidden=5, seed=3)
SMALL = ModelConfig(vocab_size=16, hidden=8, seed=1)


def randomised(cfg: ModelConfig = TINY, rank: int = 3, seed: int = 0) -> LoraModel:
    """A model whose LoRA B is non-zero, so that every parameter gets a non-trivial gradient."""
    model = LoraModel("tiny-base", rank, seed, cfg)
    rng = np.random.default_rng(seed + 100)
    params = model.get_parameters()
    model.set_parameters({"lora_A": params["lora_A"], "lora_B": rng.standard_normal(params["lora_B"].shape)})
    return model


def assert_parameter_gradients(
    label: str, base: dict[str, F64], analytic: dict[str, F64], loss_at: Callable[[dict[str, F64]], float]
) -> None:
    """Central finite differences of ``loss_at`` around ``base`` equal ``analytic``, parameter by parameter
    (relative error < 1e-6), and none of them is trivially zero."""
    step = 1e-6
    for name, value in base.items():
        numeric = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            plus = {k: v.copy() for k, v in base.items()}
            minus = {k: v.copy() for k, v in base.items()}
            plus[name][idx] += step
            minus[name][idx] -= step
            numeric[idx] = (loss_at(plus) - loss_at(minus)) / (2 * step)
        scale = float(np.max(np.abs(numeric)))
        assert scale > 1e-3, f"{label}: the gradient of {name} is trivially zero"
        error = float(np.max(np.abs(numeric - analytic[name]))) / scale
        assert error < 1e-6, f"{label} {name}: relative error {error:.2e}"
