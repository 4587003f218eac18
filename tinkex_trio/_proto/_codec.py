"""Protobuf converters between ``tinkex_trio.types`` and the wire messages of protocol §5.

Shared by the client (encodes requests, decodes results) and the simulated server (the reverse). Arrays travel as
raw little-endian bytes and are converted with numpy in bulk: no Python loop runs per token or per value.

Client side::

    body = encode_forward_backward_request(model_id, seq_id, data, "cross_entropy", None, forward_only=False)
    out = decode_forward_backward_output(result_bytes)            # ResponseValidationError on bad bytes
    resp = decode_sample_response(result_bytes, future.sample_sequence_ids)

Server side::

    req = decode_forward_backward_request(body)                    # ProtoDecodeError (a ValueError) on bad bytes
    result_bytes = encode_forward_backward_output(out)
    result_bytes = encode_sample_response(resp)

Conventions shared with the official SDK, so that either side can talk to the other:

- a tensor without a shape is 1-D; response tensors are always written with their shape;
- ``BatchedTensor`` offsets are **byte** offsets; a datum's shape is ``[elements / prod(trailing), *trailing]``
  (so a 0-d output comes back as shape ``[1]``); BF16 is widened to float32 and INT32 to int64;
- an ArrayRecord with ``num_datums == 0`` holds as many datums as its first field's offsets say (per record);
- empty ``logprobs`` / ``prompt_logprobs`` bytes read as "not requested" (``None``);
- top-k lists are dense ``(n, k)`` matrices padded with token 0 / logprob ``-99999.0``, decoded as a
  :class:`~tinkex_trio.types.TopkLogprobs`; as a list, a row that is all padding reads as ``None``; ``n == 0`` or
  ``k == 0`` reads as ``None``;
- ``prompt_logprobs`` is decoded as a float32 array, NaN where unscored (``None`` in its list form).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Final

import msgspec
import numpy as np
from google.protobuf.message import DecodeError, Message

from ..errors import ResponseValidationError
from ..types import (
    Datum,
    DmelChunk,
    EncodedTextChunk,
    ForwardBackwardOutput,
    ImageChunk,
    ModelInput,
    ModelInputChunk,
    PromptAltTokens,
    ProvenanceRun,
    ProvenanceSpan,
    SampledSequence,
    SampleResponse,
    StopReason,
    TensorData,
    TopkEntry,
)
from ..types._sampling import (
    TOPK_PAD_LOGPROB,
    TOPK_PAD_TOKEN,
    TopkLogprobs,
    stored_logprobs,
    stored_prompt_logprobs,
    stored_tokens,
    stored_topk,
    stored_topk_prompt,
)
from . import tinkex_wire_pb2 as pb
from ._arrays import (
    F32,
    I32,
    I32_MAX,
    I32_MIN,
    I64,
    MAX_FIELDLESS_DATUMS,
    TO_WIRE_DTYPE,
    AnyArray,
    Body,
    ProtoDecodeError,
    float32_bytes,
    frombuffer,
    int32_bytes,
    owned,
    read_tensor,
    tensor_values,
    widen,
    wire_dtype,
    write_tensor,
)

__all__ = [
    "PROTOBUF_CONTENT_TYPE",
    "TOPK_PAD_LOGPROB",
    "TOPK_PAD_TOKEN",
    "ForwardBackwardRequestData",
    "ProtoDecodeError",
    "decode_forward_backward_output",
    "decode_forward_backward_request",
    "decode_sample_response",
    "encode_forward_backward_output",
    "encode_forward_backward_request",
    "encode_sample_response",
]

#: The content type of every protobuf body (request and result).
PROTOBUF_CONTENT_TYPE: Final = "application/x-protobuf"


_STOP_TO_WIRE: Final[dict[str, pb.StopReason]] = {
    "stop": pb.STOP_REASON_STOP,
    "length": pb.STOP_REASON_LENGTH,
}
_STOP_FROM_WIRE: Final[dict[int, StopReason]] = {pb.STOP_REASON_STOP: "stop", pb.STOP_REASON_LENGTH: "length"}
_IMAGE_FORMATS: Final = frozenset({"png", "jpeg"})


class ForwardBackwardRequestData(msgspec.Struct, kw_only=True, frozen=True):
    """A decoded forward_backward protobuf request.

    ``loss_fn_config`` merges the two wire maps (``loss_fn_config_v2`` wins); ``None`` when both are empty.
    """

    model_id: str
    seq_id: int
    data: list[Datum]
    loss_fn: str
    loss_fn_config: dict[str, float | str] | None
    forward_only: bool


# ---------------------------------------------------------------------------------------------------------------
# forward_backward request
# ---------------------------------------------------------------------------------------------------------------


def _write_chunk(msg: pb.Chunk, chunk: ModelInputChunk, what: str) -> None:
    if isinstance(chunk, EncodedTextChunk):
        msg.encoded_text.tokens = int32_bytes(chunk.tokens, f"{what}.tokens")
    elif isinstance(chunk, ImageChunk):
        image = msg.image
        image.data = chunk.data
        image.format = chunk.format
        if chunk.expected_tokens is not None:
            image.expected_tokens = chunk.expected_tokens
    elif isinstance(chunk, DmelChunk):
        msg.dmel.dmel = chunk.dmel
    else:
        # An ImageAssetPointerChunk, or anything else that is not a chunk the wire can carry.
        raise ValueError(
            f"{what}: a {type(chunk).__name__} cannot be sent in forward_backward (the protobuf wire format has no "
            "image pointers); send the image bytes as an ImageChunk"
        )


def _write_span(msg: pb.ProvenanceSpan, span: ProvenanceSpan) -> None:
    if span.prompt_tokens is not None:
        run, target = span.prompt_tokens, msg.prompt_tokens
        target.sequence_id, target.offset, target.length = run.sequence_id, run.offset, run.length
    elif span.sampled_tokens is not None:
        run, sampled = span.sampled_tokens, msg.sampled_tokens
        sampled.sequence_id, sampled.offset, sampled.length = run.sequence_id, run.offset, run.length


def encode_forward_backward_request(
    model_id: str,
    seq_id: int,
    data: Sequence[Datum],
    loss_fn: str,
    loss_fn_config: Mapping[str, float | str] | None,
    forward_only: bool,
) -> bytes:
    """The protobuf body of ``POST /api/v1/forward_backward`` (forward_only=True for ``forward()``).

    Numeric ``loss_fn_config`` values go to both ``loss_fn_config`` and ``loss_fn_config_v2``; strings only to v2.
    ``ValueError`` for data the wire cannot carry: an ImageAssetPointerChunk, a token outside int32, a bad tensor.
    """
    if not I32_MIN <= seq_id <= I32_MAX:
        raise ValueError(f"seq_id {seq_id} is out of the int32 range")
    # Serialized in three parts, the bytes SerializeToString would give (fields in number order): fields 1-2, then
    # each datum (field 3) serialized on its own, then fields 4-7. upb serializes one multi-MiB message several
    # times slower than the same bytes as many small ones (256 x 1024 tokens: ~6 ms against ~1 ms).
    head = pb.ForwardBackwardRequest(model_id=model_id, seq_id=seq_id)
    msg = pb.ForwardBackwardRequest(loss_fn=loss_fn, forward_only=forward_only)
    if loss_fn_config is not None:
        for key, value in loss_fn_config.items():
            if isinstance(value, str):
                msg.loss_fn_config_v2[key].text = value
            else:
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    raise ValueError(
                        f"loss_fn_config[{key!r}] must be a number or a string, got {type(value).__name__}"
                    ) from None
                msg.loss_fn_config[key] = number
                msg.loss_fn_config_v2[key].number = number
    parts = [head.SerializeToString()]
    for i, datum in enumerate(data):
        what = f"data[{i}]"
        out = pb.Datum()
        for j, chunk in enumerate(datum.model_input.chunks):
            _write_chunk(out.model_input.add(), chunk, f"{what}.model_input.chunks[{j}]")
        for name, td in datum.loss_fn_inputs.items():
            write_tensor(out.loss_fn_inputs[name], td, f"{what}.loss_fn_inputs[{name!r}]", always_shape=False)
        for span in datum.model_input_spans or ():
            _write_span(out.model_input_spans.add(), span)
        for span in datum.loss_fn_input_spans or ():
            _write_span(out.loss_fn_input_spans.add(), span)
        body = out.SerializeToString()
        parts += (_DATA_TAG, _varint(len(body)), body)
    parts.append(msg.SerializeToString())
    return b"".join(parts)


_DATA_TAG: Final = bytes([(3 << 3) | 2])
"""The key of ForwardBackwardRequest.data (field 3, length-delimited)."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_chunk(msg: pb.Chunk, path: str) -> ModelInputChunk:
    kind = msg.WhichOneof("chunk")
    if kind == "encoded_text":
        tokens: list[int] = frombuffer(msg.encoded_text.tokens, I32, f"{path}.encoded_text.tokens").tolist()
        return EncodedTextChunk(tokens=tokens)
    if kind == "image":
        image = msg.image
        if image.format not in _IMAGE_FORMATS:
            raise ProtoDecodeError(f"image format must be 'png' or 'jpeg', got {image.format!r}", f"{path}.image")
        expected = image.expected_tokens if image.HasField("expected_tokens") else None
        return ImageChunk(data=image.data, format="png" if image.format == "png" else "jpeg", expected_tokens=expected)
    if kind == "dmel":
        return DmelChunk(dmel=msg.dmel.dmel)
    raise ProtoDecodeError("a model input chunk has no content", path)


def _read_span(msg: pb.ProvenanceSpan, path: str) -> ProvenanceSpan:
    kind = msg.WhichOneof("span")
    if kind == "prompt_tokens":
        p = msg.prompt_tokens
        return ProvenanceSpan(prompt_tokens=ProvenanceRun(sequence_id=p.sequence_id, offset=p.offset, length=p.length))
    if kind == "sampled_tokens":
        s = msg.sampled_tokens
        return ProvenanceSpan(sampled_tokens=ProvenanceRun(sequence_id=s.sequence_id, offset=s.offset, length=s.length))
    raise ProtoDecodeError("a provenance span has neither prompt_tokens nor sampled_tokens", path)


def _read_datum(msg: pb.Datum, path: str) -> Datum:
    chunks = [_read_chunk(c, f"{path}.model_input[{j}]") for j, c in enumerate(msg.model_input)]
    inputs = {name: read_tensor(t, f"{path}.loss_fn_inputs.{name}") for name, t in msg.loss_fn_inputs.items()}
    model_spans = [_read_span(s, f"{path}.model_input_spans[{j}]") for j, s in enumerate(msg.model_input_spans)]
    input_spans = [_read_span(s, f"{path}.loss_fn_input_spans[{j}]") for j, s in enumerate(msg.loss_fn_input_spans)]
    has_spans = bool(model_spans or input_spans)
    return Datum(
        model_input=ModelInput(chunks=chunks),
        loss_fn_inputs=inputs,
        model_input_spans=model_spans if has_spans else None,
        loss_fn_input_spans=input_spans if has_spans else None,
    )


def _parse(message: Message, body: Body, what: str) -> None:
    try:
        message.ParseFromString(bytes(body) if not isinstance(body, bytes) else body)
    except DecodeError as exc:
        raise ProtoDecodeError(f"not a valid protobuf {what}: {exc}") from None


def decode_forward_backward_request(body: Body) -> ForwardBackwardRequestData:
    """Decode a forward_backward protobuf body (server side). ``ProtoDecodeError`` (a ``ValueError``) if invalid."""
    msg = pb.ForwardBackwardRequest()
    _parse(msg, body, "ForwardBackwardRequest")
    config: dict[str, float | str] = {k: float(v) for k, v in msg.loss_fn_config.items()}
    for key, value in msg.loss_fn_config_v2.items():
        kind = value.WhichOneof("value")
        if kind == "number":
            config[key] = value.number
        elif kind == "text":
            config[key] = value.text
        else:
            raise ProtoDecodeError(
                "a loss_fn_config_v2 value has neither number nor text", f"$.loss_fn_config_v2.{key}"
            )
    return ForwardBackwardRequestData(
        model_id=msg.model_id,
        seq_id=msg.seq_id,
        data=[_read_datum(d, f"$.data[{i}]") for i, d in enumerate(msg.data)],
        loss_fn=msg.loss_fn,
        loss_fn_config=config or None,
        forward_only=msg.forward_only,
    )


# ---------------------------------------------------------------------------------------------------------------
# ForwardBackwardOutput
# ---------------------------------------------------------------------------------------------------------------


def _output_array(td: TensorData, what: str) -> tuple[AnyArray, tuple[int, ...]]:
    """A loss_fn_outputs tensor as (flat little-endian values, trailing shape)."""
    if td.sparse_crow_indices is not None or td.sparse_col_indices is not None:
        dense = td.to_numpy()
        values: AnyArray = dense.astype(F32 if td.dtype == "float32" else I64).ravel()
        return values, tuple(dense.shape[1:])
    values = tensor_values(td, what)
    if td.shape is None:
        return values, ()
    if math.prod(td.shape) != values.size:
        raise ValueError(f"{what}: {values.size} values do not fill shape {td.shape}")
    return values, tuple(td.shape[1:])


def encode_forward_backward_output(out: ForwardBackwardOutput) -> bytes:
    """The protobuf result of a forward_backward future (server side).

    Consecutive datums whose fields share dtype and trailing shape go into one ArrayRecord; a change starts a new
    record. Every datum must have the same output field names (``ValueError`` otherwise).
    """
    msg = pb.ForwardBackwardOutput(loss_fn_output_type=out.loss_fn_output_type)
    for key, value in out.metrics.items():
        msg.metrics[key] = float(value)
    outputs = out.loss_fn_outputs
    if not outputs:
        return msg.SerializeToString()
    names = list(outputs[0])
    name_set = set(names)
    # Per datum: the flat arrays and a signature (dtype and trailing shape of each field).
    arrays: list[list[AnyArray]] = []
    signatures: list[tuple[tuple[str, tuple[int, ...]], ...]] = []
    for i, fields in enumerate(outputs):
        if set(fields) != name_set:
            raise ValueError(
                f"loss_fn_outputs[{i}] has fields {sorted(fields)}, loss_fn_outputs[0] has {sorted(names)}: "
                "every datum must have the same fields"
            )
        row: list[AnyArray] = []
        sig: list[tuple[str, tuple[int, ...]]] = []
        for name in names:
            td = fields[name]
            values, trailing = _output_array(td, f"loss_fn_outputs[{i}][{name!r}]")
            row.append(values)
            sig.append((td.dtype, trailing))
        arrays.append(row)
        signatures.append(tuple(sig))
    start = 0
    while start < len(outputs):
        stop = start + 1
        while stop < len(outputs) and signatures[stop] == signatures[start]:
            stop += 1
        record = msg.loss_fn_outputs.add(type_tag=out.loss_fn_output_type, num_datums=stop - start)
        for f, name in enumerate(names):
            dtype, trailing = signatures[start][f]
            parts = [arrays[d][f] for d in range(start, stop)]
            itemsize = parts[0].dtype.itemsize
            offsets = np.zeros(len(parts) + 1, dtype=I64)
            np.cumsum([p.size for p in parts], out=offsets[1:])
            bt = record.fields[name]
            bt.data = np.concatenate(parts).tobytes()
            bt.offsets = (offsets * itemsize).tobytes()
            bt.dtype = TO_WIRE_DTYPE[dtype]
            bt.trailing_shape.extend(trailing)
        start = stop
    return msg.SerializeToString()


def _read_batched(bt: pb.BatchedTensor, count: int, path: str) -> list[TensorData]:
    """Split one BatchedTensor into ``count`` per-datum tensors."""
    np_dtype, dtype = wire_dtype(bt.dtype, f"{path}.dtype")
    raw = frombuffer(bt.data, np_dtype, f"{path}.data")
    offsets = frombuffer(bt.offsets, I64, f"{path}.offsets")
    if count == 0 and offsets.size <= 1:
        return []
    if offsets.size != count + 1:
        raise ProtoDecodeError(f"{offsets.size} offsets for {count} datums (need num_datums + 1)", f"{path}.offsets")
    itemsize = np_dtype.itemsize
    if (
        bool(np.any(offsets % itemsize))
        or bool(np.any(np.diff(offsets) < 0))
        or int(offsets[0]) < 0
        or int(offsets[-1]) > len(bt.data)
    ):
        raise ProtoDecodeError(
            f"offsets must be non-decreasing multiples of {itemsize} within the {len(bt.data)} data bytes",
            f"{path}.offsets",
        )
    trailing = [int(s) for s in bt.trailing_shape]
    if any(s < 0 for s in trailing):
        raise ProtoDecodeError(f"negative trailing_shape {trailing}", f"{path}.trailing_shape")
    per_row = math.prod(trailing)
    bounds: list[int] = (offsets // itemsize).tolist()
    sizes = np.diff(offsets) // itemsize
    if bool(np.any(sizes % per_row)) if per_row else bool(np.any(sizes)):
        raise ProtoDecodeError(f"a datum's values do not fill whole rows of trailing shape {trailing}", path)
    # One bulk copy (or widening) of the field's bytes; every datum's tensor is a view of its own slice of it.
    flat = owned(widen(raw, bt.dtype))
    leading: list[int] = (sizes // per_row).tolist() if per_row else [0] * count
    return [
        TensorData(data=flat[bounds[d] : bounds[d + 1]], dtype=dtype, shape=[leading[d], *trailing])
        for d in range(count)
    ]


def _decode_fbo(msg: pb.ForwardBackwardOutput) -> ForwardBackwardOutput:
    outputs: list[dict[str, TensorData]] = []
    for r, record in enumerate(msg.loss_fn_outputs):
        fields = list(record.fields.items())
        count = record.num_datums
        if count < 0:
            raise ProtoDecodeError(f"negative num_datums {count}", f"$.loss_fn_outputs[{r}].num_datums")
        if count == 0 and fields:
            count = max(len(fields[0][1].offsets) // 8 - 1, 0)
        if not fields and count > MAX_FIELDLESS_DATUMS:
            raise ProtoDecodeError(f"num_datums {count} is implausible", f"$.loss_fn_outputs[{r}].num_datums")
        rows: list[dict[str, TensorData]] = [{} for _ in range(count)]
        for name, bt in fields:
            for row, td in zip(rows, _read_batched(bt, count, f"$.loss_fn_outputs[{r}].fields.{name}"), strict=True):
                row[name] = td
        outputs.extend(rows)
    type_name = msg.loss_fn_output_type.rsplit(":", 1)[-1] or "ArrayRecord"
    return ForwardBackwardOutput(
        loss_fn_output_type=type_name,
        loss_fn_outputs=outputs,
        metrics={k: float(v) for k, v in msg.metrics.items()},
    )


def _validation_error(exc: ProtoDecodeError, body: Body) -> ResponseValidationError:
    return ResponseValidationError(str(exc), field=exc.path, body=bytes(body[:2048]))


def decode_forward_backward_output(body: Body) -> ForwardBackwardOutput:
    """Decode a protobuf forward_backward result. ``ResponseValidationError`` if the bytes are not a valid one."""
    msg = pb.ForwardBackwardOutput()
    try:
        _parse(msg, body, "ForwardBackwardOutput")
        return _decode_fbo(msg)
    except ProtoDecodeError as exc:
        raise _validation_error(exc, body) from None


# ---------------------------------------------------------------------------------------------------------------
# SampleResponse
# ---------------------------------------------------------------------------------------------------------------


def _write_topk(msg: pb.TopkLogprobs, entries: Sequence[TopkEntry] | TopkLogprobs, what: str) -> None:
    """Dense ``(n, k)`` matrices: a :class:`TopkLogprobs` as it is; a list with ``k`` the longest entry (at least 1),
    padded with the sentinel pair."""
    if isinstance(entries, TopkLogprobs):
        msg.token_ids = entries.token_ids.astype(I32, copy=False).tobytes()
        msg.logprobs = entries.logprobs.astype(F32, copy=False).tobytes()
        msg.length, msg.k = entries.token_ids.shape
        return
    n = len(entries)
    lengths = np.fromiter((len(e) if e is not None else 0 for e in entries), dtype=np.int64, count=n)
    k = max(1, int(lengths.max())) if n else 1
    ids = np.full((n, k), TOPK_PAD_TOKEN, dtype=I32)
    lps = np.full((n, k), TOPK_PAD_LOGPROB, dtype=F32)
    total = int(lengths.sum())
    if total:
        try:
            pairs: AnyArray = np.asarray(list(itertools.chain.from_iterable(e for e in entries if e)), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what}: top-k entries must be (token id, logprob) pairs ({exc})") from None
        if pairs.shape != (total, 2):
            raise ValueError(f"{what}: top-k entries must be (token id, logprob) pairs")
        tokens = pairs[:, 0]
        if not bool(np.all((tokens >= I32_MIN) & (tokens <= I32_MAX) & (tokens == np.trunc(tokens)))):
            raise ValueError(f"{what}: top-k token ids must be integers in the int32 range")
        row_idx = np.repeat(np.arange(n), lengths)
        col_idx = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        ids[row_idx, col_idx] = tokens
        with np.errstate(over="ignore"):
            lps[row_idx, col_idx] = pairs[:, 1]
    msg.token_ids = ids.tobytes()
    msg.logprobs = lps.tobytes()
    msg.k = k
    msg.length = n


def _read_topk(msg: pb.TopkLogprobs, path: str) -> TopkLogprobs | None:
    """The dense matrices as they are (writable copies); they read as lists, ``None`` for a padding row."""
    n, k = msg.length, msg.k
    if n == 0 or k == 0:
        return None
    ids = frombuffer(msg.token_ids, I32, f"{path}.token_ids")
    lps = frombuffer(msg.logprobs, F32, f"{path}.logprobs")
    if ids.size != n * k or lps.size != n * k:
        raise ProtoDecodeError(f"top-k arrays need length * k = {n * k} values, got {ids.size} and {lps.size}", path)
    return TopkLogprobs(ids.reshape(n, k).copy(), lps.reshape(n, k).copy())


def encode_sample_response(resp: SampleResponse) -> bytes:
    """The protobuf result of an asample future (server side). ``sequence_id`` is not on the wire (it travels in
    the future's ``sample_sequence_ids``)."""
    msg = pb.SampleResponse(prompt_cache_hit_tokens=resp.prompt_cache_hit_tokens)
    for i, seq in enumerate(resp.sequences):
        what = f"sequences[{i}]"
        stop = _STOP_TO_WIRE.get(seq.stop_reason)
        if stop is None:
            raise ValueError(f"{what}.stop_reason must be 'stop' or 'length', got {seq.stop_reason!r}")
        out = msg.sequences.add(stop_reason=stop, tokens=int32_bytes(stored_tokens(seq), f"{what}.tokens"))
        logprobs = stored_logprobs(seq)
        if logprobs is not None:
            out.logprobs = float32_bytes(logprobs, f"{what}.logprobs")
        topk = stored_topk(seq)
        if topk is not None:
            _write_topk(out.topk_sampled_logprobs, topk, f"{what}.topk_logprobs")
    prompt_logprobs = stored_prompt_logprobs(resp)
    if prompt_logprobs is not None:
        msg.prompt_logprobs = float32_bytes(prompt_logprobs, "prompt_logprobs")
    topk_prompt = stored_topk_prompt(resp)
    if topk_prompt is not None:
        _write_topk(msg.topk_prompt_logprobs, topk_prompt, "topk_prompt_logprobs")
    if resp.target_prompt_logprobs is not None:
        write_tensor(
            msg.target_prompt_logprobs, resp.target_prompt_logprobs, "target_prompt_logprobs", always_shape=True
        )
    if resp.prompt_alt_tokens is not None:
        alt = msg.prompt_alt_tokens
        write_tensor(alt.tokens, resp.prompt_alt_tokens.tokens, "prompt_alt_tokens.tokens", always_shape=True)
        write_tensor(alt.logprobs, resp.prompt_alt_tokens.logprobs, "prompt_alt_tokens.logprobs", always_shape=True)
    return msg.SerializeToString()


def _decode_sample(msg: pb.SampleResponse, sequence_ids: Sequence[str] | None) -> SampleResponse:
    if sequence_ids is not None and len(sequence_ids) != len(msg.sequences):
        raise ProtoDecodeError(
            f"{len(msg.sequences)} sequences but the future named {len(sequence_ids)} sample_sequence_ids",
            "$.sequences",
        )
    sequences: list[SampledSequence] = []
    for i, seq in enumerate(msg.sequences):
        path = f"$.sequences[{i}]"
        stop = _STOP_FROM_WIRE.get(seq.stop_reason)
        if stop is None:
            raise ProtoDecodeError(f"unknown stop_reason {seq.stop_reason}", f"{path}.stop_reason")
        # Writable arrays (a copy of the message bytes), as the official SDK's; read as lists on first use.
        tokens = owned(frombuffer(seq.tokens, I32, f"{path}.tokens"))
        logprobs = owned(frombuffer(seq.logprobs, F32, f"{path}.logprobs")) if seq.logprobs else None
        topk = (
            _read_topk(seq.topk_sampled_logprobs, f"{path}.topk_sampled_logprobs")
            if seq.HasField("topk_sampled_logprobs")
            else None
        )
        sequences.append(
            SampledSequence(
                stop_reason=stop,
                tokens=tokens,
                sequence_id=sequence_ids[i] if sequence_ids is not None else None,
                logprobs=logprobs,
                topk_logprobs=topk,
            )
        )
    # Kept as the float32 array (NaN where unscored), as the official SDK does; it reads as a list with None.
    prompt_logprobs = owned(frombuffer(msg.prompt_logprobs, F32, "$.prompt_logprobs")) if msg.prompt_logprobs else None
    topk_prompt = (
        _read_topk(msg.topk_prompt_logprobs, "$.topk_prompt_logprobs") if msg.HasField("topk_prompt_logprobs") else None
    )
    target = (
        read_tensor(msg.target_prompt_logprobs, "$.target_prompt_logprobs")
        if msg.HasField("target_prompt_logprobs")
        else None
    )
    alt = (
        PromptAltTokens(
            tokens=read_tensor(msg.prompt_alt_tokens.tokens, "$.prompt_alt_tokens.tokens"),
            logprobs=read_tensor(msg.prompt_alt_tokens.logprobs, "$.prompt_alt_tokens.logprobs"),
        )
        if msg.HasField("prompt_alt_tokens")
        else None
    )
    return SampleResponse(
        sequences=sequences,
        prompt_logprobs=prompt_logprobs,
        topk_prompt_logprobs=topk_prompt,
        target_prompt_logprobs=target,
        prompt_alt_tokens=alt,
        prompt_cache_hit_tokens=msg.prompt_cache_hit_tokens,
    )


def decode_sample_response(body: Body, sequence_ids: Sequence[str] | None = None) -> SampleResponse:
    """Decode a protobuf asample result. ``ResponseValidationError`` if the bytes are not a valid one.

    ``sequence_ids`` (the future's ``sample_sequence_ids``) become the sequences' ``sequence_id`` in order; their
    number must match the number of sequences. Without them every ``sequence_id`` is ``None``.
    """
    msg = pb.SampleResponse()
    try:
        _parse(msg, body, "SampleResponse")
        return _decode_sample(msg, sequence_ids)
    except ProtoDecodeError as exc:
        raise _validation_error(exc, body) from None
