"""imgcls serve: the settings from flags, environment and config file, then the server until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from imgcls.cli.serve_flags import SERVE_FLAGS, add_setting_flag, setting_field


def add_parser(sub: Any, *, flags: bool = True) -> None:
    p = sub.add_parser(
        "serve",
        help="serve models over gRPC",
        description="Serve ONNX image classifiers over gRPC. Every option but --dtype can also be set with an "
        "IMGCLS_* environment variable named after its setting (IMGCLS_PORT, IMGCLS_BATCHING__MAX_BATCH_SIZE, "
        "...) and in a TOML --config file (where each model can have its own dtype, batching and runtime); "
        "precedence: flags > environment > config file > defaults.",
    )
    if not flags:
        return
    p.add_argument(
        "--model",
        action="append",
        metavar="NAME=SOURCE",
        help="a model to serve: a Hugging Face layout folder, a .onnx file, a model spec (.yaml/.json) or a "
        "Hugging Face repo id owner/repo[@revision]; repeat for several; the first is the default "
        "(default: the embedded EfficientNet-Lite0)",
    )
    from imgcls.server.sources.variants import DTYPES

    p.add_argument(
        "--dtype",
        metavar="{" + ",".join(DTYPES) + "}",
        help="variant of the --model entries, by transformers.js file name; auto: config.json's "
        "transformers.js_config.dtype, else fp32 (default: fp32)",
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML config file (models with per-model dtype, batching, threads; relative paths in it are "
        "relative to its folder) (default: IMGCLS_CONFIG, else none)",
    )
    for flag in SERVE_FLAGS:
        info = setting_field(flag.path)
        if info is not None:  # a flag whose setting this version does not have is left out
            add_setting_flag(p, flag, info)


def _set_path(target: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        target = target.setdefault(part, {})
    target[leaf] = value


def serve_settings_from_args(args: argparse.Namespace) -> Any:
    from imgcls.server.domain.errors import ConfigError
    from imgcls.server.settings import load_settings, parse_model_arg

    cli: dict[str, Any] = {}
    for flag in SERVE_FLAGS:
        value = getattr(args, flag.attribute, None)
        if value is None:
            continue
        if flag.path == "auth_tokens":  # a file of tokens, read by load_settings
            cli["auth_token_file"] = value
        else:
            _set_path(cli, flag.path, value)
    if args.model:
        cli["models"] = [parse_model_arg(m, args.dtype) for m in args.model]
    elif args.dtype:
        # Models from the environment or the file keep their own dtype; ignoring the flag would serve
        # another variant than the one asked for.
        raise ConfigError("dtype: --dtype applies to --model entries; give the dtype per model in the config file")
    # Only the flags given reach load_settings, so that the others can come from the environment or the
    # file (a --tls-client-ca alone turns on mTLS for a certificate configured there).
    return load_settings(cli, config_file=args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    # gRPC's C core logs through its own logger (a raw "E... add_port.cc" line above imgcls's message when
    # the port is taken); it reads GRPC_VERBOSITY when grpc is first imported, which is after this.
    if not os.environ.get("GRPC_VERBOSITY"):
        os.environ["GRPC_VERBOSITY"] = "NONE"
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
