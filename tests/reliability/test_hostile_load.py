"""Hostile load (issue 12): every row of the issue's table, at a scale this machine runs in seconds each.

One ``imgcls serve`` in a child process (loopback, port 0, a bearer token, an explicit memory budget, so the
RSS measured is the server's own), and a normal caller in another process (cat.jpg every 0.25 s over gRPC and
over HTTP, each on its own connection). Each test runs one row (tests/reliability/hostile.py) beside the
normal caller and asserts:

- the server's peak RSS over the row stays within its bound over idle: the budget, the messages being
  received in read slots (at most twice their size: gRPC's buffer and the copy handed to Python) and 64 MiB of
  allocator slack (PEAK_BOUND);
- the exact status every attacker's call got (RESOURCE_EXHAUSTED at once where refused; never CANCELLED,
  UNKNOWN or INTERNAL), and that some heavy calls still succeed;
- every normal call was answered, p99 under 5 s (under 2 s while only tokenless callers attack);
- afterwards RSS comes back near idle, and threads and file descriptors to their idle counts.

The rows run in order on one server; each test is bounded by its own timeout. For the numbers at full scale,
see tests/reliability/attack.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from reliability.hostile import (
    MIB,
    ROWS,
    SECRET,
    ChildServer,
    NormalCaller,
    ProcStatus,
    RowReport,
    Target,
    measure,
    percentile,
    warm_up,
)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(90)]

BUDGET = 256 * MIB
MAX_MESSAGE = 64 * MIB  # the server's default message limit
MESSAGE_TIMEOUT_S = 3.0
# Read slots of the gate for unary messages (a quarter of the budget at the message limit, at least 2), and as
# many for stream messages.
SLOTS = max(2, BUDGET // (4 * MAX_MESSAGE))
PEAK_BOUND = BUDGET + 2 * (2 * SLOTS) * MAX_MESSAGE + 64 * MIB
# After a row: RSS back within this of idle (freed heap handed back), within SETTLE_S.
NEAR_IDLE = 128 * MIB
SETTLE_S = 15.0
# What refusing a call "at once" may take. A request is charged its whole cost when it is admitted, what
# decoding its images will hold included (read from their headers), so a refusal comes before it waits for
# anything else; but its message must be received first, and it may wait its turn for a read slot (two in
# this configuration, each held while a 6 MB message arrives, cut after 2 s), at most --read-wait (5 s, the
# default) before it is refused for that. So the bound is that wait and a second to receive and answer.
# Measured at test scale: slowest refusals 0.34-1.6 s over 6 runs; before admission counted decoding, a request
# of many JPEGs was admitted to the decode queue and could be refused as each image was decoded: 0.4-3.7 s.
# The issue's "before": 21-28 s.
AT_ONCE_S = 6.0
NORMAL_P99_S = 5.0
HTTP_MAX_CONNECTIONS = 2000
# What 3000 idle gRPC connections may add to RSS: gRPC core's buffers for each.
GRPC_IDLE_GROWTH = 256 * MIB
NORMAL_P99_TOKENLESS_S = 2.0


@dataclass
class Hostile:
    server: ChildServer
    caller: NormalCaller
    target: Target
    idle: ProcStatus


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hostile(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hostile]:
    folder = tmp_path_factory.mktemp("hostile")
    tokens = folder / "tokens"
    tokens.write_text(SECRET + "\n")
    flags = ["--auth-token-file", str(tokens), "--memory-budget", str(BUDGET)]
    flags += ["--message-timeout", str(MESSAGE_TIMEOUT_S)]
    # Under the idle-connection rows' 3000, so the HTTP door reaches its cap and makes room by closing idle ones.
    flags += ["--http-max-connections", str(HTTP_MAX_CONNECTIONS)]
    server = ChildServer(folder / "server.log", *flags).start()
    caller = NormalCaller(server.target, server.http_address, SECRET).start()
    try:
        await asyncio.to_thread(caller.wait_answered, 4, 0.0)
        target = Target(server, SECRET)
        await warm_up(target)
        yield Hostile(server, caller, target, server.status())
    finally:
        caller.stop()
        server.stop()


def mib(n: int) -> int:
    return round(n / MIB)


async def run(h: Hostile, row: str) -> RowReport:
    assert h.server.alive(), f"the server died before {row}:\n{h.server.log()[-3000:]}"
    report = await measure(ROWS[row], "test", h.target, h.caller, h.idle)
    print(json.dumps(report.summary()))  # shown on failure (and with -s)
    assert h.server.alive(), f"the server died during {row}:\n{h.server.log()[-3000:]}"
    return report


def assert_bounded(h: Hostile, report: RowReport) -> None:
    over = report.peak_rss - h.idle.rss
    assert over <= PEAK_BOUND, (
        f"{report.row}: peak RSS {mib(report.peak_rss)} MiB, {mib(over)} MiB over idle; bound {mib(PEAK_BOUND)} MiB "
        f"(budget {mib(BUDGET)} + reads in {2 * SLOTS} slots + slack)"
    )


def assert_codes(report: RowReport, allowed: set[str]) -> None:
    unexpected = set(report.outcomes.codes) - allowed
    codes, messages = dict(report.outcomes.codes), report.outcomes.messages
    assert not unexpected, f"{report.row}: attacker calls ended {codes}: {messages}"


def assert_at_once(report: RowReport, code: str) -> None:
    slowest = report.outcomes.slowest(code)
    assert slowest <= AT_ONCE_S, f"{report.row}: a call refused {code} only after {slowest:.2f}s"


def assert_normal_served(report: RowReport, p99_s: float = NORMAL_P99_S) -> None:
    calls = report.normal
    assert calls, f"{report.row}: the normal caller made no call during the row"
    failed = [(c.door, c.code, round(c.seconds, 2), c.details) for c in calls if c.code != "OK"]
    assert not failed, f"{report.row}: normal calls failed: {failed}"
    p99 = percentile([c.seconds for c in calls], 99)
    assert p99 < p99_s, f"{report.row}: the normal caller's p99 was {p99:.2f}s (bound {p99_s}s)"


async def assert_back_to_idle(h: Hostile, row: str) -> None:
    """RSS near idle, threads and file descriptors at their idle counts: polled, within SETTLE_S."""
    deadline = time.monotonic() + SETTLE_S
    while True:
        now = h.server.status()
        back = now.rss <= h.idle.rss + NEAR_IDLE and now.threads <= h.idle.threads + 2 and now.fds <= h.idle.fds + 4
        if back:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{row}: {SETTLE_S}s later RSS {mib(now.rss)} MiB (idle {mib(h.idle.rss)}), threads {now.threads} "
                f"(idle {h.idle.threads}), fds {now.fds} (idle {h.idle.fds})"
            )
        await asyncio.sleep(0.25)


async def test_large_raw_frames_from_many_callers(hostile: Hostile) -> None:
    report = await run(hostile, "large_frames")
    assert_bounded(hostile, report)
    assert_codes(report, {"OK", "RESOURCE_EXHAUSTED"})
    assert report.outcomes.codes["OK"] > 0, "no heavy call succeeded"
    assert_at_once(report, "RESOURCE_EXHAUSTED")
    assert_normal_served(report)
    await assert_back_to_idle(hostile, report.row)


async def test_many_calls_of_many_jpegs(hostile: Hostile) -> None:
    report = await run(hostile, "many_jpegs")
    assert_bounded(hostile, report)
    assert_codes(report, {"OK", "RESOURCE_EXHAUSTED"})
    assert report.outcomes.codes["OK"] > 0, "no heavy call succeeded"
    assert report.outcomes.codes["RESOURCE_EXHAUSTED"] > 0, "the row never reached the budget: make it heavier"
    assert_at_once(report, "RESOURCE_EXHAUSTED")
    assert_normal_served(report)
    await assert_back_to_idle(hostile, report.row)


async def test_streams_that_never_read(hostile: Hostile) -> None:
    report = await run(hostile, "unread_streams")
    assert_bounded(hostile, report)
    # Open until the attacker left, or refused at once; a frame over the budget is refused on its own and the
    # stream goes on.
    assert_codes(report, {"OPEN (cancelled by the attacker)", "RESOURCE_EXHAUSTED"})
    assert_normal_served(report)
    await assert_back_to_idle(hostile, report.row)


async def test_hundreds_of_concurrent_unary_calls(hostile: Hostile) -> None:
    report = await run(hostile, "unary_flood")
    assert_bounded(hostile, report)
    assert_codes(report, {"OK", "RESOURCE_EXHAUSTED"})  # none CANCELLED, UNKNOWN or DEADLINE_EXCEEDED
    assert report.outcomes.codes["OK"] > 0 and report.outcomes.codes["RESOURCE_EXHAUSTED"] > 0
    assert_at_once(report, "RESOURCE_EXHAUSTED")
    assert_normal_served(report)
    await assert_back_to_idle(hostile, report.row)


async def test_tokenless_gzip_calls_are_refused_before_decompression(hostile: Hostile) -> None:
    report = await run(hostile, "tokenless_gzip")
    assert dict(report.outcomes.codes) == {"UNAUTHENTICATED": ROWS["tokenless_gzip"].test["calls"]}
    # 60 MB of zeros each, never decompressed: RSS flat.
    assert report.growth <= 32 * MIB, f"RSS grew {mib(report.growth)} MiB"
    assert_normal_served(report, NORMAL_P99_TOKENLESS_S)
    await assert_back_to_idle(hostile, report.row)


async def test_messages_that_claim_64_mib_and_never_finish(hostile: Hostile) -> None:
    report = await run(hostile, "stalled_messages")
    assert_bounded(hostile, report)
    # In a slot: cut when others wait, or past the message timeout; waiting for one: nothing held, no answer yet.
    assert_codes(report, {"RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "OPEN (no answer while the attacker held on)"})
    assert_normal_served(report)
    await assert_back_to_idle(hostile, report.row)


async def test_huge_request_ids_on_a_connection_that_never_reads(hostile: Hostile) -> None:
    report = await run(hostile, "huge_request_id")
    assert_bounded(hostile, report)
    assert_codes(
        report,
        {
            "Classify: INVALID_ARGUMENT",
            # the frame's answer (INVALID_ARGUMENT, without the id) waits for a window the client never opens
            "ClassifyStream: OPEN (answer held back by the closed window)",
            "ServerReflectionInfo: RESOURCE_EXHAUSTED",  # over reflection's 64 KiB
        },
    )
    counts = ROWS["huge_request_id"].test
    assert report.outcomes.codes["Classify: INVALID_ARGUMENT"] == counts["classify"]
    assert report.outcomes.codes["ServerReflectionInfo: RESOURCE_EXHAUSTED"] == counts["reflection"]
    assert report.outcomes.extra["largest_answer_bytes"] < 4096, "something large was echoed"
    # Let go while the attacker still holds its connection (its streams open, its answers unread).
    held = report.outcomes.extra["held_mib_while_connected"]
    assert held <= ROWS["huge_request_id"].test["let_go_mib"], f"{held} MiB still held while the attacker stays"
    assert_normal_served(report)
    await assert_back_to_idle(hostile, report.row)


async def test_rapid_reset_flood(hostile: Hostile) -> None:
    report = await run(hostile, "rapid_reset")
    assert_bounded(hostile, report)
    bystanders = report.outcomes.extra["bystanders"]
    assert set(bystanders) == {"OK"} and bystanders["OK"] >= 2, f"bystanders on other connections: {bystanders}"
    assert_normal_served(report)
    await assert_back_to_idle(hostile, report.row)


async def test_authorization_header_that_is_not_utf8_is_never_logged(hostile: Hostile) -> None:
    log_before = len(hostile.server.log())
    report = await run(hostile, "bad_auth_header")
    assert dict(report.outcomes.codes) == {"UNAUTHENTICATED": ROWS["bad_auth_header"].test["calls"]}
    log = hostile.server.log()
    assert SECRET not in log and "attacker-marker" not in log
    lines = log[log_before:].splitlines()
    assert len([line for line in lines if "not valid UTF-8 (value withheld)" in line]) <= 1, lines
    assert not [line for line in lines if "Traceback" in line or " ERROR " in line], lines


async def test_invalid_utf8_in_string_fields_is_invalid_argument(hostile: Hostile) -> None:
    log_before = len(hostile.server.log())
    report = await run(hostile, "invalid_utf8")
    rounds = ROWS["invalid_utf8"].test["rounds"]
    assert dict(report.outcomes.codes) == {
        "Classify request_id: INVALID_ARGUMENT": rounds,
        "Classify model: INVALID_ARGUMENT": rounds,
        "GetModel name: INVALID_ARGUMENT": rounds,
        "ModelInfer id: INVALID_ARGUMENT": rounds,
        "ClassifyStream frame request_id: stream INVALID_ARGUMENT": rounds,
    }
    lines = hostile.server.log()[log_before:].splitlines()
    assert not [line for line in lines if "Traceback" in line or " ERROR " in line], lines


async def test_model_descriptions_reveal_no_install_path(hostile: Hostile) -> None:
    report = await run(hostile, "install_paths")
    assert all(code.endswith(": OK") for code in report.outcomes.codes), dict(report.outcomes.codes)
    assert report.outcomes.extra["leaks"] == []


async def test_http_bodies_trickled_too_slowly(hostile: Hostile) -> None:
    report = await run(hostile, "http_slow_body")
    assert_bounded(hostile, report)
    # cut from its read slot while others wait (429), timed out (408), or still waiting its turn (no answer)
    assert_codes(report, {"HTTP 429", "HTTP 408", "none"})
    assert_normal_served(report)
    await assert_back_to_idle(hostile, report.row)


async def test_http_huge_headers(hostile: Hostile) -> None:
    report = await run(hostile, "http_huge_headers")
    assert dict(report.outcomes.codes) == {"HTTP 431": ROWS["http_huge_headers"].test["connections"]}
    assert_at_once(report, "HTTP 431")
    assert report.growth <= 64 * MIB, f"RSS grew {mib(report.growth)} MiB"


async def test_http_many_idle_connections(hostile: Hostile) -> None:
    report = await run(hostile, "http_idle_connections")
    assert report.growth <= 64 * MIB, f"RSS grew {mib(report.growth)} MiB"
    # still open when the attacker left, closed to make room at the cap (never sent a byte: closed; half a
    # request line for over a second: 408), or past the header timeout (408); never a refusal for memory
    assert_codes(report, {"still open (attacker left)", "closed", "reset", "HTTP 408"})
    codes = report.outcomes.codes
    assert report.outcomes.extra["connections"] > HTTP_MAX_CONNECTIONS, "the row never reached the cap"
    assert codes["closed"] + codes["reset"] + codes["HTTP 408"] > 0, "nothing was closed to make room"
    assert_normal_served(report)  # the new connections of "http-new" among them
    await assert_back_to_idle(hostile, report.row)


async def test_grpc_many_idle_connections(hostile: Hostile) -> None:
    report = await run(hostile, "grpc_idle_connections")
    assert report.growth <= GRPC_IDLE_GROWTH, f"RSS grew {mib(report.growth)} MiB"
    assert_codes(report, {"still open (attacker left)", "closed", "reset"})
    assert_normal_served(report)  # a fresh channel every call ("grpc-new") among them
    await assert_back_to_idle(hostile, report.row)


async def test_http_bodies_trickled_at_1_kb_a_second(hostile: Hostile) -> None:
    report = await run(hostile, "http_trickled_bodies")
    assert_bounded(hostile, report)
    # cut from its slot for its rate while others wait (408); no turn within the read wait (429); still
    # waiting its turn when the attacker left (holding nothing but its connection)
    assert_codes(report, {"HTTP 408", "HTTP 429", "none"})
    assert report.outcomes.codes["HTTP 408"] > 0, "no slow sender was cut for its rate"
    assert_normal_served(report)
    await assert_back_to_idle(hostile, report.row)


async def test_http_json_numbers_over_and_under_the_json_limit(hostile: Hostile) -> None:
    report = await run(hostile, "http_json_numbers")
    assert_bounded(hostile, report)
    calls = ROWS["http_json_numbers"].test["calls"]
    assert report.outcomes.codes["over: HTTP 413"] == calls, dict(report.outcomes.codes)
    assert_at_once(report, "over: HTTP 413")
    assert_codes(report, {"over: HTTP 413", "under: HTTP 200", "under: HTTP 429"})
    assert report.outcomes.codes["under: HTTP 200"] > 0, "no JSON tensor under the limit was answered"
    assert_normal_served(report)
    await assert_back_to_idle(hostile, report.row)


async def test_http_json_of_millions_of_containers_is_refused_before_its_parse(hostile: Hostile) -> None:
    """24 KiB on the wire parsed into ~570 MB against a charge of 80 (a 256 MiB budget): refused from a count."""
    report = await run(hostile, "http_json_structure")
    assert_bounded(hostile, report)
    calls = ROWS["http_json_structure"].test["calls"]
    assert report.outcomes.codes["over: HTTP 413"] == 3 * calls, dict(report.outcomes.codes)
    assert_at_once(report, "over: HTTP 413")
    # Under the limit: parsed, charged, and refused for what it says (an unknown parameter or override).
    assert_codes(report, {"over: HTTP 413", "under: HTTP 400", "under: HTTP 429"})
    assert report.outcomes.codes["under: HTTP 400"] > 0, dict(report.outcomes.codes)
    assert_normal_served(report)
    await assert_back_to_idle(hostile, report.row)


async def test_http_json_carrying_40_mb_of_base64(hostile: Hostile) -> None:
    report = await run(hostile, "http_json_base64")
    assert_bounded(hostile, report)
    assert_codes(report, {"declared: HTTP 413", "chunked: HTTP 413"})
    assert_at_once(report, "declared: HTTP 413")
    assert_at_once(report, "chunked: HTTP 413")
    assert_normal_served(report)
    await assert_back_to_idle(hostile, report.row)


async def test_http_bodies_over_the_limit(hostile: Hostile) -> None:
    report = await run(hostile, "http_body_over_limit")
    assert_bounded(hostile, report)
    assert_codes(report, {"declared: HTTP 413", "chunked: HTTP 413", "gzip: HTTP 413"})
    assert_at_once(report, "declared: HTTP 413")
    await assert_back_to_idle(hostile, report.row)


async def test_http_large_bodies_from_many_connections(hostile: Hostile) -> None:
    report = await run(hostile, "http_large_bodies")
    assert_bounded(hostile, report)
    assert_codes(report, {"HTTP 400", "HTTP 429"})  # zeros are no image: 400 once read; 429 past the budget
    assert_normal_served(report)
    await assert_back_to_idle(hostile, report.row)


async def test_http_tokenless_gzip_bodies(hostile: Hostile) -> None:
    report = await run(hostile, "http_tokenless_gzip")
    assert dict(report.outcomes.codes) == {"HTTP 401": ROWS["http_tokenless_gzip"].test["calls"]}
    assert report.growth <= 32 * MIB, f"RSS grew {mib(report.growth)} MiB"
    assert_at_once(report, "HTTP 401")


async def test_the_rows_are_the_issues() -> None:
    """Every row of the table has a test here (and tests/reliability/attack.py runs them at full scale)."""
    source = Path(__file__).read_text()
    missing = [name for name in ROWS if f'"{name}"' not in source]
    assert missing == []
