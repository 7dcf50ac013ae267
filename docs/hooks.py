"""MkDocs hooks: the configuration and CLI reference pages are generated from the code at build time, so they
cannot drift from it. A page asks for one with a marker line: ``<!-- generated: settings -->`` or
``<!-- generated: cli -->``."""

from __future__ import annotations

import os
from typing import Any

MARKERS = {"<!-- generated: settings -->": "settings", "<!-- generated: cli -->": "cli"}


def on_page_markdown(markdown: str, **_: Any) -> str:
    for marker, kind in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, settings_reference() if kind == "settings" else cli_reference())
    return markdown


def _leaves(model: Any, prefix: str = "") -> list[tuple[str, Any]]:
    from imgcls.cli.serve_flags import _model_class

    out = []
    for name, info in model.model_fields.items():
        nested = _model_class(info.annotation)
        if nested is not None and name != "models":
            out += _leaves(nested, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", info))
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def settings_reference() -> str:
    """One row per setting: its flag, its environment variable, its default and what it does (the flag's help)."""
    from imgcls.cli.serve_flags import SERVE_FLAGS, _default_text
    from imgcls.server.settings import ServerSettings

    flags = {flag.path: flag for flag in SERVE_FLAGS}
    rows = [
        "| setting | `imgcls serve` flag | environment variable | default | what it does |",
        "|---|---|---|---|---|",
    ]
    for path, info in _leaves(ServerSettings):
        flag = flags.get(path)
        env = "IMGCLS_" + path.upper().replace(".", "__")
        if flag is not None:
            default, what, option = _default_text(flag, info), flag.help, ", ".join(f"`{f}`" for f in flag.flags)
        else:
            default = "" if info.is_required() else str(info.get_default(call_default_factory=True))
            what, option = info.description or "set in the config file (see above)", "-"
        rows.append(f"| `{path}` | {option} | `{env}` | `{_cell(default)}` | {_cell(what)} |")
    return "\n".join(rows)


def cli_reference() -> str:
    """``imgcls --help`` and every command's ``--help``, as the CLI prints them."""
    import argparse

    from imgcls.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal: a fixed width, the same on every build
    parser = build_parser()
    sections = ["## imgcls", "", "```text", parser.format_help().rstrip(), "```"]
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        sections += ["", f"## imgcls {name}", "", "```text", command.format_help().rstrip(), "```"]
    return "\n".join(sections)
