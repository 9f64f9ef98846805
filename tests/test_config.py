"""Every default of `rillet serve` comes from rillet/config.py's one dataclass: the flags, their help,
each layer's own defaults and the README's table of flags say the same."""
from __future__ import annotations

import inspect
import re
from dataclasses import fields
from pathlib import Path

from rillet.config import DEFAULTS, ServeConfig, flag_of

README = Path(__file__).resolve().parent.parent / "README.md"


def serve_defaults() -> ServeConfig:
    from rillet.cli import build_parser

    return ServeConfig.from_args(build_parser().parse_args(["serve"]))


def test_the_flags_parse_to_the_dataclass_defaults():
    assert serve_defaults() == DEFAULTS


def test_each_flag_s_help_says_its_default():
    from rillet.cli import build_parser

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    helps = {action.dest: action.help for action in serve._actions}
    for f in fields(ServeConfig):
        shown = f.metadata["shown"]
        if shown is None:
            expected = f"{f.default:g}" if isinstance(f.default, float) else str(f.default)
            assert helps[f.name].endswith(f"(default: {expected})"), f.name
        elif shown:
            assert f"(default: {shown.format(default=f.default)})" in helps[f.name], f.name


def test_the_layers_defaults_are_the_dataclass_s():
    from rillet.api import app, body_limit, http_server
    from rillet.api.admission import AdmissionLimits
    from rillet.chat.terminal import DEFAULT_BASE_URL
    from rillet.engine.config import EngineConfig
    from rillet.engine.engine_process import RestartPolicy
    from rillet.model import loader
    from rillet.model.weight_formats import DEFAULT_WEIGHT_FORMAT

    assert DEFAULTS.engine_config() == EngineConfig()
    assert RestartPolicy() == DEFAULTS.restart_policy()
    limits = AdmissionLimits()
    assert (limits.max_queued_requests, limits.max_queued_tokens, limits.queue_timeout) == (
        DEFAULTS.max_queued_requests, DEFAULTS.max_queued_tokens, DEFAULTS.queue_timeout)
    assert http_server.ConnectionLimits() == http_server.ConnectionLimits(DEFAULTS.header_timeout,
                                                                          DEFAULTS.max_connections)
    middleware = inspect.signature(body_limit.BodySizeLimitMiddleware).parameters
    assert (middleware["max_bytes"].default, middleware["timeout"].default) == (DEFAULTS.max_request_bytes,
                                                                                DEFAULTS.body_timeout)
    create_app = inspect.signature(app.create_app).parameters
    assert (create_app["max_request_bytes"].default, create_app["body_timeout"].default) == (
        DEFAULTS.max_request_bytes, DEFAULTS.body_timeout)
    assert DEFAULT_WEIGHT_FORMAT == DEFAULTS.weights
    assert inspect.signature(loader.load_model).parameters["weight_format"].default == DEFAULTS.weights
    assert DEFAULT_BASE_URL == f"http://{DEFAULTS.host}:{DEFAULTS.port}/v1"


def readme_flag_table() -> dict[str, str]:
    """`rillet serve`'s table in the README: each flag's default cell (a cell of several flags,
    such as `--host`, `--port`, split where its default cell has as many parts)."""
    text = README.read_text()
    table = text[text.index("## `rillet serve`"):]
    table = table[:table.index("\n## ")]
    defaults = {}
    for row in table.splitlines():
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        flags = re.findall(r"--[a-z0-9-]+", cells[0]) if len(cells) >= 3 else []
        if not flags or cells[1] == "default":
            continue
        parts = cells[1].split(", ") if len(flags) > 1 else [cells[1]]
        parts = parts if len(parts) == len(flags) else parts * len(flags)  # one default for all
        assert len(parts) == len(flags), row
        defaults.update(zip(flags, parts))
    return defaults


def test_the_readme_s_table_says_the_same_defaults():
    documented = readme_flag_table()
    for f in fields(ServeConfig):
        cell = documented.get(flag_of(f.name))
        assert cell is not None, f"{flag_of(f.name)} is missing from the README's table of flags"
        literal = re.fullmatch(r"`?([\w.\-]+)`?( \(.*\))?", cell)
        if f.default is None or f.default == () or isinstance(f.default, bool):  # said in words: "off", "one per core", "none"
            assert not re.match(r"`?[\d.]+`?( |$)", cell), (f.name, cell)
            continue
        assert literal is not None, (f.name, cell)
        if isinstance(f.default, (int, float)):
            assert float(literal.group(1)) == f.default, (f.name, cell)
        else:
            assert literal.group(1) == f.default, (f.name, cell)
