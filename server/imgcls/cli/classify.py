"""imgcls classify: image files, one request each, every file its result or its error."""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from imgcls.cli.common import (
    PER_INPUT_CODES,
    UsageError,
    add_client_options,
    add_ranking_options,
    brief,
    client_from_args,
    prediction_dicts,
    read_image,
)

if TYPE_CHECKING:
    from imgcls.client import Client


def add_parser(sub: Any) -> None:
    classify = sub.add_parser(
        "classify",
        help="classify image files",
        description="Classify image files, one request each: every file gets its result or its error, and the "
        "exit status is 1 when any failed.",
    )
    classify.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, WebP, GIF, BMP, TIFF)")
    add_ranking_options(classify, top_k=None)
    classify.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    add_client_options(classify)


@dataclass
class _FileResult:
    path: str
    predictions: list[Any] = field(default_factory=list)
    error: str | None = None  # "CODE: message" from the server, or why the file could not be sent


def cmd_classify(args: argparse.Namespace) -> int:
    from imgcls.client import ClientError

    def classify_one(client: Client, path: str) -> _FileResult:
        try:
            data = read_image(path)
        except UsageError as exc:
            return _FileResult(path, error=str(exc))
        try:
            predictions = client.classify(
                data, model=args.model, top_k=args.top_k, threshold=args.threshold, function_to_apply=args.function
            )
        except ClientError as exc:
            if exc.code.name not in PER_INPUT_CODES:
                raise  # the call itself failed (server down, unknown model, token): the same for every file
            return _FileResult(path, error=f"{exc.code.name}: {brief(exc.message)}")
        return _FileResult(path, predictions)

    results: list[_FileResult] = []
    with client_from_args(args) as client, ThreadPoolExecutor(max_workers=min(8, len(args.images))) as pool:
        # One request per file, so one bad file fails alone; read and sent 8 at a time, printed in order.
        jobs = [pool.submit(classify_one, client, path) for path in args.images]
        for job in jobs:
            try:
                result = job.result()
            except ClientError as exc:
                pool.shutdown(cancel_futures=True)
                print(f"imgcls classify: {exc}", file=sys.stderr)
                return 1
            results.append(result)
            if result.error is not None:
                sys.stdout.flush()  # in order with the results before it on a terminal
                print(f"imgcls classify: {result.path}: {result.error}", file=sys.stderr)
            elif not args.json:
                print(result.path)
                for prediction in result.predictions:
                    print(f"  {prediction.score:8.4f}  {prediction.label}")
    if args.json:
        out: dict[str, Any] = {}
        for result in results:
            if result.error is None:
                out[result.path] = prediction_dicts(result.predictions)
            else:
                out[result.path] = {"error": result.error}
        print(json.dumps(out, indent=2))
    return 1 if any(result.error is not None for result in results) else 0
