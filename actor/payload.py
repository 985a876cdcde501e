"""Conversions between the wire payloads and Python values.

Owns the mapping of ``Lease.payload`` (``input`` Value | ``input_bytes``) to the handler's input,
and of the handler's return value to ``AttemptResult.result`` (``output`` Value | ``output_bytes``).

Invariants:
- Input: a ``google.protobuf.Value`` becomes JSON-like Python (dict / list / str / float / bool /
  None). All numbers arrive as floats (``3`` is seen as ``3.0``): JSON numbers in a Value are
  doubles. ``input_bytes`` becomes ``bytes``. A lease with no payload gives ``None``.
- Output: ``bytes``/``bytearray``/``memoryview`` -> ``output_bytes``; ``None`` -> NO result field
  set (the task then has no output; a null Value is never sent); anything else must be
  JSON-serializable (dict with str keys, list, tuple, str, int, float, bool, None; no NaN/inf) and
  becomes ``output``.
- A return value that cannot be encoded never raises out of this module: ``encode_output`` raises
  ``OutputNotSerializable``, which the attempt runner turns into a FAILED result.
"""

from __future__ import annotations

from math import isfinite
from typing import Any

from google.protobuf import json_format, struct_pb2

from corral.v1 import actor_service_pb2

OUTPUT_NOT_SERIALIZABLE = "OutputNotSerializable"
OUTPUT_TOO_LARGE = "OutputTooLarge"
# Largest encoded output an actor reports (the coordinator's default input limit is the same):
# one result must always fit in a message, or it would block every result behind it.
MAX_OUTPUT_BYTES = 1 << 20


class OutputNotSerializable(Exception):
    """The handler returned a value that cannot be reported: neither bytes, None, nor
    JSON-serializable (kind OutputNotSerializable), or too large (kind OutputTooLarge)."""

    def __init__(self, message: str, kind: str = OUTPUT_NOT_SERIALIZABLE) -> None:
        super().__init__(message)
        self.kind = kind


def decode_input(lease: actor_service_pb2.Lease) -> Any:
    """The handler input carried by ``lease``."""
    which = lease.WhichOneof("payload")
    if which == "input":
        return value_to_python(lease.input)
    if which == "input_bytes":
        return bytes(lease.input_bytes)
    return None


def decode_prerequisites(lease: actor_service_pb2.Lease) -> dict[str, Any]:
    """The outputs of the lease's prerequisites (task graphs), by task id, decoded like the input."""
    out: dict[str, Any] = {}
    for item in lease.prerequisites:
        which = item.WhichOneof("result")
        if which == "output":
            out[item.task_id] = value_to_python(item.output)
        elif which == "output_bytes":
            out[item.task_id] = bytes(item.output_bytes)
        else:
            out[item.task_id] = None
    return out


def value_to_python(value: struct_pb2.Value) -> Any:
    """``google.protobuf.Value`` -> JSON-like Python."""
    return json_format.MessageToDict(value)


def _non_finite(obj: Any) -> bool:
    """Whether `obj` (already accepted by ParseDict) holds a NaN or an infinity. A walk of its
    containers, floats checked with isfinite: json.dumps(allow_nan=False) would format every
    number and cost ~10% of an actor's work per attempt."""
    if isinstance(obj, float):
        return not isfinite(obj)
    if isinstance(obj, dict):
        for item in obj.values():
            if (isinstance(item, (float, dict, list, tuple))) and _non_finite(item):
                return True
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            if (isinstance(item, (float, dict, list, tuple))) and _non_finite(item):
                return True
    return False


def python_to_value(obj: Any) -> struct_pb2.Value:
    """JSON-like Python -> ``google.protobuf.Value``; raises ``OutputNotSerializable``."""
    value = struct_pb2.Value()
    try:
        json_format.ParseDict(obj, value)
        # ParseDict accepts NaN and +-inf, which no JSON can carry: such a Value could be stored
        # but never rendered as JSON (GetTask) nor decoded again (a dependent's prerequisites, a
        # parent's wait_child).
        if _non_finite(obj):
            raise ValueError("NaN and infinity are not JSON numbers")
    except Exception as exc:  # noqa: BLE001 - e.g. OverflowError for an int past a double's range
        raise OutputNotSerializable(
            f"handler returned a value that is not JSON-serializable "
            f"({type(obj).__name__}): {exc}"
        ) from None
    return value


def encode_output(result: actor_service_pb2.AttemptResult, obj: Any) -> None:
    """Set ``result``'s output from the handler's return value ``obj``.

    ``None`` leaves the result oneof unset. Raises ``OutputNotSerializable`` (result untouched).
    """
    if obj is None:
        return
    if isinstance(obj, (bytes, bytearray, memoryview)):
        result.output_bytes = bytes(obj)
        return
    result.output.CopyFrom(python_to_value(obj))
