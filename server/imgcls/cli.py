"""The ``imgcls`` command: serve, classify, stream, health, models."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser(
        "serve",
        help="serve models over gRPC",
        description="Serve ONNX image classifiers over gRPC. Every option but --dtype can also be set with an "
        "IMGCLS_* environment variable named after its setting (IMGCLS_PORT, IMGCLS_BATCHING__MAX_BATCH_SIZE, "
        "...) and in a TOML --config file (where each model can have its own dtype, batching and runtime); "
        "precedence: flags > environment > config file > defaults.",
    )
    p.add_argument("--host", help="address to bind (default 127.0.0.1; 0.0.0.0 in the container)")
    p.add_argument("--port", type=int, help="gRPC port (default 50051; 0 picks a free port)")
    p.add_argument(
        "--model",
        action="append",
        metavar="NAME=SOURCE",
        help="a model to serve: a Hugging Face layout folder, a .onnx file, a model spec (.yaml/.json) or a "
        "Hugging Face repo id owner/repo[@revision]; repeat for several; the first is the default. "
        "None: the embedded EfficientNet-Lite0",
    )
    p.add_argument("--dtype", help="variant of the --model entries: auto, fp32, fp16, q8, int8, uint8, q4, q4f16, bnb4")
    p.add_argument("--default-model", help="name of the default model (default: the first)")
    p.add_argument("--config", type=Path, help="TOML config file (models with per-model dtype, batching, threads)")
    p.add_argument("--max-batch-size", type=int, help="largest batch one ONNX Runtime run takes (1 = no batching)")
    p.add_argument("--max-queue-delay-us", type=int, help="longest wait for a batch to fill, from its oldest input")
    p.add_argument("--queue-limit", type=int, help="queued inputs per model before RESOURCE_EXHAUSTED")
    p.add_argument(
        "--instances",
        type=int,
        help="concurrent ONNX Runtime runs per model, each on its own thread (0 = auto: one per core on CPU, "
        "up to 4; one on GPU)",
    )
    p.add_argument(
        "--intra-op-threads", type=int, help="ONNX Runtime intra-op threads per run (0 = the cores / instances)"
    )
    p.add_argument("--inter-op-threads", type=int, help="ONNX Runtime inter-op threads")
    p.add_argument(
        "--providers",
        help="comma-separated execution providers, e.g. CUDAExecutionProvider,CPUExecutionProvider (CPU is "
        "always the fallback)",
    )
    p.add_argument("--max-message-bytes", type=int, help="largest gRPC message (default 64 MiB)")
    p.add_argument("--max-inputs-per-request", type=int, help="inputs (and tensor batch rows) per request")
    p.add_argument("--max-image-pixels", type=int, help="refuse images with more pixels (decompression bombs)")
    p.add_argument("--max-tensor-elements", type=int, help="refuse pre-processed tensors with more values")
    p.add_argument("--preprocess-threads", type=int, help="decode/preprocess threads (0 = one per CPU)")
    p.add_argument(
        "--no-jpeg-draft",
        dest="jpeg_draft",
        action="store_const",
        const=False,
        help="decode large JPEGs at full size (exact parity with transformers; slower)",
    )
    p.add_argument("--stream-max-in-flight", type=int, help="frames in flight per ClassifyStream")
    p.add_argument("--grace-period", dest="grace_period_s", type=float, help="seconds to finish work on shutdown")
    p.add_argument(
        "--max-connection-age-s",
        type=float,
        metavar="SECONDS",
        help="send clients a GOAWAY on connections older than this, so they reconnect and re-resolve DNS "
        "(picks up pods added behind a headless Service); default: no limit",
    )
    p.add_argument(
        "--max-connection-age-grace-s",
        type=float,
        metavar="SECONDS",
        help="then close the connection after this long even if calls (streams) are still running; "
        "default: when they end",
    )
    p.add_argument("--metrics-port", type=int, help="Prometheus metrics HTTP port (unset: no metrics server)")
    p.add_argument("--tls-cert", help="server certificate chain (PEM); with --tls-key enables TLS")
    p.add_argument("--tls-key", help="server private key (PEM)")
    p.add_argument("--tls-client-ca", help="CA (PEM) that client certificates must chain to (mutual TLS)")
    p.add_argument("--auth-token-file", help="file of accepted bearer tokens, one a line (or IMGCLS_AUTH_TOKENS)")
    p.add_argument(
        "--auth-close-health",
        dest="auth_open_health",
        action="store_const",
        const=False,
        help="require a token for health and reflection too",
    )
    p.add_argument("--hf-token", help="Hugging Face token for gated repos (or HF_TOKEN)")
    p.add_argument("--cache-dir", help="Hugging Face cache folder (default: HF_HUB_CACHE / HF_HOME)")
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="default info (a start-up summary); debug adds one line per request with its request_id",
    )
    p.add_argument("--log-format", choices=["text", "json"], help="json: one JSON object a line (default text)")


def serve_settings_from_args(args: argparse.Namespace) -> Any:
    from imgcls.server.domain.errors import ConfigError
    from imgcls.server.settings import load_settings, parse_model_arg

    cli: dict[str, Any] = {
        key: getattr(args, key)
        for key in (
            "host",
            "port",
            "default_model",
            "max_message_bytes",
            "max_inputs_per_request",
            "max_image_pixels",
            "max_tensor_elements",
            "preprocess_threads",
            "jpeg_draft",
            "stream_max_in_flight",
            "grace_period_s",
            "max_connection_age_s",
            "max_connection_age_grace_s",
            "metrics_port",
            "auth_token_file",
            "auth_open_health",
            "hf_token",
            "cache_dir",
            "log_level",
            "log_format",
        )
    }
    if args.model:
        cli["models"] = [parse_model_arg(m, args.dtype) for m in args.model]
    elif args.dtype:
        # Models from the environment or the file keep their own dtype; ignoring the flag would serve
        # another variant than the one asked for.
        raise ConfigError("dtype: --dtype applies to --model entries; give the dtype per model in the config file")
    batching = {
        "max_batch_size": args.max_batch_size,
        "max_queue_delay_us": args.max_queue_delay_us,
        "queue_limit": args.queue_limit,
    }
    cli["batching"] = {k: v for k, v in batching.items() if v is not None} or None
    runtime: dict[str, Any] = {
        "intra_op_threads": args.intra_op_threads,
        "inter_op_threads": args.inter_op_threads,
        "instances": args.instances,
    }
    if args.providers:
        runtime["providers"] = tuple(p.strip() for p in args.providers.split(",") if p.strip())
    cli["runtime"] = {k: v for k, v in runtime.items() if v is not None} or None
    # Only the TLS flags given, so that the others can come from the environment or the file (a
    # --tls-client-ca alone turns on mTLS for a certificate configured there).
    tls = {"cert_file": args.tls_cert, "key_file": args.tls_key, "client_ca_file": args.tls_client_ca}
    cli["tls"] = {k: v for k, v in tls.items() if v is not None} or None
    return load_settings(cli, config_file=args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    from imgcls.server.domain.errors import ImgclsError
    from imgcls.server.logging_setup import configure_logging
    from imgcls.server.server import serve

    try:
        settings = serve_settings_from_args(args)
    except ImgclsError as exc:
        print(f"imgcls serve: {exc.message}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except ImgclsError as exc:
        logging.getLogger("imgcls").error("cannot start: %s", exc.message)
        return 1
    except OSError as exc:  # e.g. the port is taken
        logging.getLogger("imgcls").error("cannot start: %s", exc)
        return 1
    return 0


def _client(args: argparse.Namespace) -> Any:
    from imgcls.client import Client

    token = args.token
    root = Path(args.ca).read_bytes() if args.ca else None
    cert = (Path(args.cert).read_bytes(), Path(args.key).read_bytes()) if args.cert else None
    servers = [s for part in args.server for s in part.split(",") if s]
    return Client(servers, timeout=args.timeout, token=token, tls=args.tls, root_certificates=root, client_cert=cert)


def _add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        action="append",
        default=[],
        help="HOST:PORT (repeat, or comma-separate, for several; dns:///name:port works); default 127.0.0.1:50051",
    )
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per call")
    p.add_argument("--token", help="bearer token")
    p.add_argument("--tls", action="store_true", help="use TLS")
    p.add_argument("--ca", help="CA certificate (PEM) to verify the server")
    p.add_argument("--cert", help="client certificate (PEM) for mutual TLS")
    p.add_argument("--key", help="client private key (PEM) for mutual TLS")


def _servers(args: argparse.Namespace) -> None:
    if not args.server:
        args.server = ["127.0.0.1:50051"]


def cmd_classify(args: argparse.Namespace) -> int:
    from imgcls.client import ClientError

    _servers(args)
    with _client(args) as client:
        try:
            results = client.classify_batch(
                [Path(p) for p in args.images],
                model=args.model,
                top_k=args.top_k,
                threshold=args.threshold,
                function_to_apply=args.function,
            )
        except ClientError as exc:
            print(f"imgcls classify: {exc}", file=sys.stderr)
            return 1
    if args.json:
        out = {
            path: [{"label": p.label, "score": p.score} for p in predictions]
            for path, predictions in zip(args.images, results, strict=True)
        }
        print(json.dumps(out, indent=2))
        return 0
    for path, predictions in zip(args.images, results, strict=True):
        print(path)
        for prediction in predictions:
            print(f"  {prediction.score:8.4f}  {prediction.label}")
    return 0


def _frames_from(source: Path) -> Iterator[Any]:
    if source.is_dir():
        for path in sorted(source.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                yield path
        return
    try:
        import av  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit("imgcls stream: reading video files needs PyAV: pip install 'imgcls[video]'") from None
    with av.open(str(source)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="rgb24")


def cmd_stream(args: argparse.Namespace) -> int:
    from imgcls.client import ClientError

    _servers(args)
    started = time.perf_counter()
    count = 0
    with _client(args) as client:
        try:
            for result in client.classify_stream(
                _frames_from(Path(args.source)), model=args.model, top_k=1, drop_stale=args.drop_stale
            ):
                count += 1
                if result.skipped:
                    print(f"{result.request_id}\tskipped")
                elif not result.ok:
                    print(f"{result.request_id}\terror {result.code.name}: {result.message}")
                else:
                    top = result.predictions[0][0]
                    print(f"{result.request_id}\t{top.score:.4f}\t{top.label}")
        except ClientError as exc:
            print(f"imgcls stream: {exc}", file=sys.stderr)
            return 1
    elapsed = time.perf_counter() - started
    print(f"{count} frames in {elapsed:.2f}s: {count / elapsed if elapsed else 0:.1f} frames/s", file=sys.stderr)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    from imgcls.client import ClientError

    _servers(args)
    with _client(args) as client:
        try:
            serving = client.health(args.service)
        except ClientError as exc:
            print(f"NOT_SERVING ({exc})")
            return 1
    print("SERVING" if serving else "NOT_SERVING")
    return 0 if serving else 1


def cmd_models(args: argparse.Namespace) -> int:
    from google.protobuf import json_format
    from imgcls.client import ClientError

    _servers(args)
    try:
        with _client(args) as client:
            models = client.list_models()
    except ClientError as exc:
        print(f"imgcls models: {exc}", file=sys.stderr)
        return 1
    for model in models:
        info = json_format.MessageToDict(model)
        info.pop("labels", None)
        print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imgcls", description="gRPC image classification on ONNX Runtime")
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)

    classify = sub.add_parser("classify", help="classify image files")
    classify.add_argument("images", nargs="+", help="image files")
    classify.add_argument("--model", default="", help="served model name (default: the server's default)")
    classify.add_argument("--top-k", type=int, default=None)
    classify.add_argument("--threshold", type=float, default=None)
    classify.add_argument("--function", choices=["softmax", "sigmoid", "none"], default=None)
    classify.add_argument("--json", action="store_true", help="print JSON")
    _add_client_options(classify)

    stream = sub.add_parser("stream", help="classify a video file (needs imgcls[video]) or a folder of images")
    stream.add_argument("source", help="video file or folder of images")
    stream.add_argument("--model", default="")
    stream.add_argument("--drop-stale", action="store_true", help="skip frames that queue up (live video)")
    _add_client_options(stream)

    health = sub.add_parser("health", help="check grpc.health.v1; exit 0 when SERVING")
    health.add_argument("--service", default="", help="service name (default: the whole server)")
    _add_client_options(health)
    health.set_defaults(timeout=5.0)

    models = sub.add_parser("models", help="list the served models")
    _add_client_options(models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = {
        "serve": cmd_serve,
        "classify": cmd_classify,
        "stream": cmd_stream,
        "health": cmd_health,
        "models": cmd_models,
    }[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
