"""imgcls health and imgcls models: is the server serving, and what does it serve."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from imgcls.cli.common import add_client_options, client_from_args

if TYPE_CHECKING:
    from imgcls.v1 import classifier_pb2 as pb


def add_parsers(sub: Any) -> None:
    health = sub.add_parser("health", help="check grpc.health.v1; exit 0 when SERVING")
    health.add_argument("--service", default="", help="service name (default: the whole server)")
    add_client_options(health, timeout=5.0)

    models = sub.add_parser("models", help="list the served models")
    models.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    add_client_options(models)


def cmd_health(args: argparse.Namespace) -> int:
    from imgcls.client import ClientError

    with client_from_args(args) as client:
        try:
            serving = client.health(args.service)
        except ClientError as exc:
            print(f"NOT_SERVING ({exc})")
            return 1
    print("SERVING" if serving else "NOT_SERVING")
    return 0 if serving else 1


_DTYPE_NAMES = {1: "float32", 2: "float16"}
_FUNCTION_NAMES = {1: "softmax", 2: "sigmoid", 3: "none"}


def model_summary(model: pb.ModelInfo) -> dict[str, Any]:
    """A ModelInfo as plain JSON types (ints as ints, enums as names); labels left out, their count kept."""
    from google.protobuf import json_format

    preprocessing = json_format.MessageToDict(model.preprocessing)
    stats = model.stats
    return {
        "name": model.name,
        "default": model.is_default,
        "ready": model.ready,
        "source": model.source,
        "variant": model.variant,
        "input": {
            "name": model.input_name,
            "shape": list(model.input_shape),
            "dtype": _DTYPE_NAMES.get(model.input_dtype, str(model.input_dtype)),
            "layout": model.input_layout,
        },
        "num_labels": model.num_labels,
        "default_function": _FUNCTION_NAMES.get(model.default_function_to_apply, "unspecified"),
        "preprocessing": {k: _whole(v) for k, v in preprocessing.items()},
        "max_batch_size": model.max_batch_size,
        "stats": {
            "requests": stats.requests,
            "failed_requests": stats.failed_requests,
            "inputs": stats.inputs,
            "batches": stats.batches,
            "dropped_inputs": stats.dropped_inputs,
            "batch_size_counts": {int(k): int(v) for k, v in sorted(stats.batch_size_counts.items())},
            "queue_time_us": stats.queue_time_us,
            "compute_time_us": stats.compute_time_us,
        },
    }


def _whole(value: Any) -> Any:
    """Struct numbers are doubles: 2.0 -> 2, recursively."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value


def _models_table(models: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("name", "default", "source", "variant", "input", "labels", "batching"):
        table.add_column(column, overflow="fold")
    for model in models:
        shape = "x".join("?" if d < 0 else str(d) for d in model["input"]["shape"])
        stats = model["stats"]
        batching = f"max {model['max_batch_size']}"
        if stats["batches"]:
            batching += f", {stats['inputs']} inputs in {stats['batches']} runs"
        table.add_row(
            model["name"] + ("" if model["ready"] else " (not ready)"),
            "yes" if model["default"] else "",
            model["source"],
            model["variant"] or "-",
            f"{model['input']['name']} {shape} {model['input']['dtype']} {model['input']['layout']}",
            str(model["num_labels"]),
            batching,
        )
    console = Console() if sys.stdout.isatty() else Console(width=10_000, color_system=None)
    console.print(table)


def cmd_models(args: argparse.Namespace) -> int:
    from imgcls.client import ClientError

    try:
        with client_from_args(args) as client:
            models = [model_summary(m) for m in client.list_models()]
    except ClientError as exc:
        print(f"imgcls models: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(models, indent=2))
    else:
        _models_table(models)
    return 0
