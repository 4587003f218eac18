"""What the simulator-model tests share: array aliases, two small model configurations, a model with non-zero LoRA."""

from __future__ import annotations

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
