"""Argument checks for the public methods of Session, TrainingClient and SamplingClient.

Each public method calls these first, before any request is built and before any sequence id is taken, so that a
refused call leaves the client exactly as it was: the next valid call gets the next id and the server sees no hole.
Every check is a pure function that returns the value to use (sometimes normalised, e.g. an iterable made a list) or
raises :class:`~tinkex_trio.errors.InvalidArgumentError` (a ``ValueError``) or
:class:`~tinkex_trio.errors.InvalidArgumentTypeError` (also a ``TypeError``) naming the argument.

What a type checks at its own construction (token ids >= 0, finite optimizer parameters, loss inputs converted to
TensorData) is not repeated here beyond the type itself, except where a mutable struct could have been changed
since (optimizer parameters are re-checked: a NaN would be sent as ``null``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, cast

import msgspec
import numpy as np

from tinkex_trio import types
from tinkex_trio.errors import InvalidArgumentError, InvalidArgumentTypeError
from tinkex_trio.types._training import check_step_params

__all__ = [
    "SampleOptions",
    "check_bool",
    "check_create_lora",
    "check_data",
    "check_fwdbwd",
    "check_fwdbwd_items",
    "check_int",
    "check_loss_fn",
    "check_loss_fn_config",
    "check_metadata",
    "check_model_input",
    "check_name",
    "check_optimizer_params",
    "check_optimizer_params_list",
    "check_optional_int",
    "check_path",
    "check_positive_int",
    "check_prompt_logprobs_last_n",
    "check_sample",
    "check_sampling_client_source",
    "check_sampling_params",
    "check_str",
    "check_target_prompt_logprobs",
    "check_ttl",
    "prompt_length",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: The server's limit on a checkpoint name (it also refuses "/", "." and "..").
MAX_NAME_LENGTH = 256

LossFnConfig = Mapping[str, float | str]
FwdBwdArgs = tuple[list[types.Datum], str, LossFnConfig | None]


def _kind(value: object) -> str:
    return type(value).__name__


def _is_collection(value: object, *refused: type) -> bool:
    """Whether ``value`` is an iterable other than a str, bytes, mapping or one of ``refused``.

    A str is iterable, and iterating it would look for Datum among its characters; a mapping iterates its keys.
    """
    if isinstance(value, (str, bytes, bytearray, Mapping, *refused)):
        return False
    return isinstance(value, Iterable)


def _is_int(value: object) -> bool:
    # bool is an int to Python, never to a caller who wrote num_samples=True.
    return isinstance(value, int) and not isinstance(value, bool)


# -- scalars ---------------------------------------------------------------------------------------------------------


def check_bool(value: object, name: str) -> bool:
    """``value`` if it is a bool."""
    if not isinstance(value, bool):
        raise InvalidArgumentTypeError(f"{name} must be a bool, got {_kind(value)}", argument=name)
    return value


def check_int(value: object, name: str, *, minimum: int | None = None) -> int:
    """``value`` if it is an int (a bool is not an int here) >= ``minimum``."""
    if not _is_int(value):
        raise InvalidArgumentTypeError(f"{name} must be an int, got {_kind(value)}", argument=name)
    number = cast("int", value)
    if minimum is not None and number < minimum:
        raise InvalidArgumentError(f"{name} must be >= {minimum}, got {number}", argument=name)
    return number


def check_positive_int(value: object, name: str) -> int:
    """``value`` if it is an int >= 1."""
    return check_int(value, name, minimum=1)


def check_optional_int(value: object, name: str, *, minimum: int | None = None) -> int | None:
    """``value`` if it is ``None`` or an int (not a bool) >= ``minimum``."""
    if value is None:
        return None
    if not _is_int(value):
        raise InvalidArgumentTypeError(f"{name} must be an int or None, got {_kind(value)}", argument=name)
    return check_int(value, name, minimum=minimum)


def check_ttl(value: object, name: str = "ttl_seconds") -> int | None:
    """``None`` (no expiry) or a positive number of seconds."""
    return check_optional_int(value, name, minimum=1)


def check_str(value: object, name: str) -> str:
    """``value`` if it is a non-empty str without control characters (they cannot travel in a name or a path)."""
    if not isinstance(value, str):
        raise InvalidArgumentTypeError(f"{name} must be a str, got {_kind(value)}", argument=name)
    if not value:
        raise InvalidArgumentError(f"{name} must not be empty", argument=name)
    if _CONTROL.search(value):
        raise InvalidArgumentError(f"{name} must not contain control characters, got {value!r}", argument=name)
    return value


def check_name(value: object, name: str = "name") -> str:
    """A checkpoint name: a non-empty str of at most 256 characters, without ``/`` and not ``.`` or ``..``."""
    text = check_str(value, name)
    if "/" in text or text in (".", "..") or len(text) > MAX_NAME_LENGTH:
        raise InvalidArgumentError(
            f"{name} must be a checkpoint name: without '/', not '.' or '..', at most {MAX_NAME_LENGTH} characters; "
            f"got {text[:80]!r}",
            argument=name,
        )
    return text


def check_path(value: object, name: str = "path") -> str:
    """A checkpoint path (``tinker://...``): a non-empty str without control characters."""
    return check_str(value, name)


def check_metadata(value: object, name: str = "user_metadata") -> Mapping[str, Any] | None:
    """``None`` or a mapping with str keys that JSON can carry (it is encoded here to find out)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidArgumentTypeError(f"{name} must be a mapping or None, got {_kind(value)}", argument=name)
    metadata = cast("Mapping[object, Any]", value)
    for key in metadata:
        if not isinstance(key, str):
            raise InvalidArgumentTypeError(f"{name} keys must be str, got {key!r}", argument=name)
    try:
        msgspec.json.encode(dict(metadata))
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgumentTypeError(f"{name} cannot be encoded as JSON: {exc}", argument=name) from None
    return cast("Mapping[str, Any]", metadata)


def check_string_map(value: object, name: str) -> dict[str, str] | None:
    """``None`` or a mapping of str to str (a checkpoint's ``user_metadata``), as a dict."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidArgumentTypeError(
            f"{name} must be a mapping of str to str, or None, got {_kind(value)}", argument=name
        )
    out: dict[str, str] = {}
    for key, item in cast("Mapping[object, object]", value).items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise InvalidArgumentTypeError(f"{name} must map str to str, got {key!r}: {_kind(item)}", argument=name)
        out[key] = item
    return out


MAX_AGE_RECIPIENTS: Final = 10


def check_recipients(value: object, name: str = "age_encryption_recipients") -> list[str] | None:
    """``None`` or 1 to 10 age recipients (``age1…`` keys or SSH public keys), as a list of str."""
    if value is None:
        return None
    if isinstance(value, str) or not _is_collection(value):
        raise InvalidArgumentTypeError(f"{name} must be a list of str, got {_kind(value)}", argument=name)
    items = [check_str(item, f"{name}[{i}]") for i, item in enumerate(cast("Iterable[object]", value))]
    if not 1 <= len(items) <= MAX_AGE_RECIPIENTS:
        raise InvalidArgumentError(
            f"{name} must hold 1 to {MAX_AGE_RECIPIENTS} recipients, got {len(items)}", argument=name
        )
    return items


# -- training --------------------------------------------------------------------------------------------------------


def check_data(data: object, name: str = "data") -> list[types.Datum]:
    """A non-empty sequence (or any iterable but a str, bytes or mapping) of Datum, as a list.

    A Datum converts its own lists and arrays when it is built; here only the container and the element types are
    checked.
    """
    if not _is_collection(data, types.Datum):
        raise InvalidArgumentTypeError(f"{name} must be a sequence of Datum, got {_kind(data)}", argument=name)
    items = list(cast("Iterable[object]", data))
    if not items:
        raise InvalidArgumentError(f"{name} must hold at least one Datum", argument=name)
    for index, item in enumerate(items):
        if not isinstance(item, types.Datum):
            argument = f"{name}[{index}]"
            raise InvalidArgumentTypeError(f"{argument} must be a Datum, got {_kind(item)}", argument=argument)
    return cast("list[types.Datum]", items)


def check_loss_fn(value: object, name: str = "loss_fn") -> str:
    """A loss function's name: a non-empty str. Unknown names are left for the server to judge."""
    return check_str(value, name)


def check_loss_fn_config(value: object, name: str = "loss_fn_config") -> LossFnConfig | None:
    """``None`` or a mapping of str keys to finite numbers or strs."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidArgumentTypeError(f"{name} must be a mapping or None, got {_kind(value)}", argument=name)
    config = cast("Mapping[object, object]", value)
    for key, item in config.items():
        if not isinstance(key, str):
            raise InvalidArgumentTypeError(f"{name} keys must be str, got {key!r}", argument=name)
        argument = f"{name}[{key!r}]"
        if isinstance(item, str):
            continue
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise InvalidArgumentTypeError(
                f"{argument} must be a number or a str, got {_kind(item)}", argument=argument
            )
        if not math.isfinite(item):
            raise InvalidArgumentError(f"{argument} must be finite, got {item!r}", argument=argument)
    return cast("LossFnConfig", config)


def check_fwdbwd(data: object, loss_fn: object, loss_fn_config: object) -> FwdBwdArgs:
    """The arguments of forward / forward_backward: ``(data as a list, loss_fn, loss_fn_config)``."""
    return check_data(data), check_loss_fn(loss_fn), check_loss_fn_config(loss_fn_config)


def check_fwdbwd_items(items: object, name: str = "items") -> list[FwdBwdArgs]:
    """forward_backward_batch's items: an iterable of ``(data, loss_fn, loss_fn_config)`` triples, each checked.

    All are checked before the first is sent, so a bad item never leaves the batch half submitted.
    """
    if not _is_collection(items):
        raise InvalidArgumentTypeError(f"{name} must be an iterable of (data, loss_fn, loss_fn_config)", argument=name)
    checked: list[FwdBwdArgs] = []
    for index, item in enumerate(cast("Iterable[object]", items)):
        where = f"{name}[{index}]"
        kind = _kind(item)
        if not isinstance(item, tuple | list) or len(cast("tuple[object, ...]", item)) != 3:
            raise InvalidArgumentTypeError(
                f"{where} must be a (data, loss_fn, loss_fn_config) triple, got {kind}", argument=where
            )
        data, loss_fn, config = cast("tuple[object, object, object]", tuple(cast("tuple[object, ...]", item)))
        checked.append(
            (
                check_data(data, f"{where}.data"),
                check_loss_fn(loss_fn, f"{where}.loss_fn"),
                check_loss_fn_config(config, f"{where}.loss_fn_config"),
            )
        )
    return checked


def check_optimizer_params(value: object, name: str = "adam") -> types.AdamParams | types.DimuonParams:
    """An AdamParams or DimuonParams whose fields are (still) finite and in range; ``None`` is refused."""
    if not isinstance(value, types.AdamParams | types.DimuonParams):
        raise InvalidArgumentTypeError(
            f"{name} must be an AdamParams or a DimuonParams, got {_kind(value)}", argument=name
        )
    # The structs are mutable: a field may have been set to NaN since construction, and would go out as null.
    check_step_params(value, prefix=f"{name}.")
    return value


def check_optimizer_params_list(value: object, name: str = "params") -> list[types.AdamParams | types.DimuonParams]:
    """optim_step_batch's parameters, as a list, each checked before the first step is sent."""
    if not _is_collection(value, types.AdamParams, types.DimuonParams):
        raise InvalidArgumentTypeError(
            f"{name} must be an iterable of AdamParams or DimuonParams, got {_kind(value)}", argument=name
        )
    return [check_optimizer_params(p, f"{name}[{i}]") for i, p in enumerate(cast("Iterable[object]", value))]


# -- session ---------------------------------------------------------------------------------------------------------


def check_create_lora(
    base_model: object,
    rank: object,
    seed: object,
    train_mlp: object,
    train_attn: object,
    train_unembed: object,
    user_metadata: object,
) -> None:
    """The arguments of Session.create_lora_training_client."""
    check_str(base_model, "base_model")
    check_positive_int(rank, "rank")
    check_optional_int(seed, "seed")
    check_bool(train_mlp, "train_mlp")
    check_bool(train_attn, "train_attn")
    check_bool(train_unembed, "train_unembed")
    check_metadata(user_metadata)


def check_sampling_client_source(base_model: object, model_path: object) -> None:
    """create_sampling_client's ``base_model`` / ``model_path``: each ``None`` or a str, and not both ``None``."""
    if base_model is None and model_path is None:
        raise InvalidArgumentError("create_sampling_client needs a base_model or a model_path", argument="base_model")
    if base_model is not None:
        check_str(base_model, "base_model")
    if model_path is not None:
        check_path(model_path, "model_path")


# -- sampling --------------------------------------------------------------------------------------------------------


def check_model_input(value: object, name: str = "prompt") -> types.ModelInput:
    """A ModelInput (``ModelInput.from_ints([...])`` for plain tokens)."""
    if not isinstance(value, types.ModelInput):
        raise InvalidArgumentTypeError(
            f"{name} must be a ModelInput (e.g. ModelInput.from_ints([...])), got {_kind(value)}", argument=name
        )
    return value


def _check_real(value: object, name: str, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentTypeError(f"{name} must be a float, got {_kind(value)}", argument=name)
    if not (math.isfinite(value) and low <= value <= high):
        raise InvalidArgumentError(f"{name} must be finite and in [{low:g}, {high:g}], got {value!r}", argument=name)


def check_sampling_params(value: object, name: str = "sampling_params") -> types.SamplingParams | None:
    """``None`` (the defaults) or SamplingParams with ``max_tokens >= 1``, ``temperature >= 0``, ``top_p`` in
    [0, 1] and ``top_k >= -1`` (-1 is off), every number finite."""
    if value is None:
        return None
    if not isinstance(value, types.SamplingParams):
        raise InvalidArgumentTypeError(f"{name} must be a SamplingParams or None, got {_kind(value)}", argument=name)
    check_optional_int(value.max_tokens, f"{name}.max_tokens", minimum=1)
    check_optional_int(value.seed, f"{name}.seed")
    _check_real(value.temperature, f"{name}.temperature", 0.0, math.inf)
    _check_real(value.top_p, f"{name}.top_p", 0.0, 1.0)
    check_optional_int(value.top_k, f"{name}.top_k", minimum=-1)
    return value


def prompt_length(prompt: types.ModelInput) -> int | None:
    """The prompt's token count, or ``None`` when a chunk's length is unknown here (an image without
    ``expected_tokens``): the server then checks what depends on it."""
    try:
        return prompt.length
    except (ValueError, TypeError):
        return None


def check_target_prompt_logprobs(
    value: object, prompt_len: int | None, name: str = "target_prompt_logprobs"
) -> types.TensorData | None:
    """``None``, or the token ids to score as an int64 TensorData ``[len(prompt) - 1, K]`` (dense, or sparse CSR
    whose unlisted cells are -1): each id >= 0, or -1 for a cell not asked for, and at least one id. A numpy array
    (or nested list) of integers is taken as the dense tensor."""
    if value is None:
        return None
    tensor: types.TensorData
    if isinstance(value, types.TensorData):
        tensor = value
        if tensor.dtype != "int64":
            raise InvalidArgumentError(
                f"{name} must be an int64 tensor of token ids, got {tensor.dtype}", argument=name
            )
    else:
        try:
            arr = np.asarray(value)
        except ValueError:
            raise InvalidArgumentError(f"{name} must be a rectangular array of token ids", argument=name) from None
        if arr.dtype.kind not in "iu":
            raise InvalidArgumentTypeError(
                f"{name} must be a TensorData or an integer array of token ids, got {_kind(value)} of {arr.dtype}",
                argument=name,
            )
        tensor = types.TensorData.from_numpy(arr, "int64")
    if tensor.shape is None or len(tensor.shape) != 2:
        raise InvalidArgumentError(f"{name} must be 2-D, [len(prompt) - 1, K], got shape {tensor.shape}", argument=name)
    if prompt_len is not None and tensor.shape[0] != prompt_len - 1:
        raise InvalidArgumentError(
            f"{name} must have len(prompt) - 1 = {prompt_len - 1} rows, got shape {tensor.shape}", argument=name
        )
    try:
        ids = tensor.to_numpy(pad_value=-1)
    except ValueError as exc:
        raise InvalidArgumentError(f"{name}: {exc}", argument=name) from None
    if bool(np.any(ids < -1)):
        raise InvalidArgumentError(f"{name} holds token ids >= 0, or -1 for a cell not asked for", argument=name)
    if not bool(np.any(ids >= 0)):
        raise InvalidArgumentError(f"{name} names no token id (every cell is -1)", argument=name)
    return tensor


def check_prompt_logprobs_last_n(
    value: object, include_prompt_logprobs: bool, prompt_len: int | None, name: str = "prompt_logprobs_last_n"
) -> int | None:
    """``None`` (score the whole prompt), or the number of trailing prompt tokens to score: between 1 and
    ``len(prompt) - 1``, with ``include_prompt_logprobs``."""
    last_n = check_optional_int(value, name, minimum=1)
    if last_n is None:
        return None
    if not include_prompt_logprobs:
        raise InvalidArgumentError(
            f"{name} applies to prompt logprobs: it needs include_prompt_logprobs=True", argument=name
        )
    if prompt_len is not None and last_n > prompt_len - 1:
        raise InvalidArgumentError(
            f"{name} must be at most len(prompt) - 1 = {prompt_len - 1}, got {last_n}", argument=name
        )
    return last_n


class SampleOptions(msgspec.Struct, frozen=True, kw_only=True):
    """The checked prompt-scoring and top-k options of one SamplingClient.sample call."""

    include_prompt_logprobs: bool
    topk_prompt_logprobs: int
    topk_sample_logprobs: int
    target_prompt_logprobs: types.TensorData | None
    prompt_alt_tokens_k: int
    prompt_logprobs_last_n: int | None


def check_sample(
    prompt: object,
    num_samples: object,
    sampling_params: object,
    include_prompt_logprobs: object,
    topk_prompt_logprobs: object,
    topk_sample_logprobs: object = 0,
    target_prompt_logprobs: object = None,
    prompt_alt_tokens_k: object = 0,
    prompt_logprobs_last_n: object = None,
) -> SampleOptions:
    """The arguments of SamplingClient.sample; returns the options to send (``target_prompt_logprobs`` as a
    TensorData)."""
    model_input = check_model_input(prompt)
    check_positive_int(num_samples, "num_samples")
    check_sampling_params(sampling_params)
    include = check_bool(include_prompt_logprobs, "include_prompt_logprobs")
    length = prompt_length(model_input)
    return SampleOptions(
        include_prompt_logprobs=include,
        topk_prompt_logprobs=check_int(topk_prompt_logprobs, "topk_prompt_logprobs", minimum=0),
        topk_sample_logprobs=check_int(topk_sample_logprobs, "topk_sample_logprobs", minimum=0),
        target_prompt_logprobs=check_target_prompt_logprobs(target_prompt_logprobs, length),
        prompt_alt_tokens_k=check_int(prompt_alt_tokens_k, "prompt_alt_tokens_k", minimum=0),
        prompt_logprobs_last_n=check_prompt_logprobs_last_n(prompt_logprobs_last_n, include, length),
    )
