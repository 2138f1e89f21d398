"""The verifier's log lines quote at most a short prefix of a response (math-verify logs the whole of it)."""

import json
import logging
from pathlib import Path

from lambda_grpo import reward
from lambda_grpo.reward.logs import MAX_MESSAGE_CHARS, ShortenLongMessages, shorten_long_log_messages

CASES = {case["id"]: case for case in map(json.loads, Path(__file__).with_name("reward_cases.jsonl").open())}
SLOW_TO_PARSE = CASES["pathological_deep_braces"]["response"]  # math-verify's parse times out on it
LONGEST_LINE = MAX_MESSAGE_CHARS + 60  # the prefix, the "… [N more characters]" note, a logger name


def test_long_messages_keep_a_prefix_and_say_how_much_was_cut():
    logger = logging.getLogger("lambda_grpo.test_reward_logs")
    record = logger.makeRecord(
        logger.name, logging.WARNING, __file__, 1, "Timeout during parsing: %s", ("x" * 10_000,), None
    )
    assert ShortenLongMessages().filter(record)
    message = record.getMessage()
    assert message.startswith("Timeout during parsing: xxx") and message.endswith("… [9824 more characters]")
    assert len(message) < LONGEST_LINE
    short = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "short %s", ("one",), None)
    assert ShortenLongMessages().filter(short) and short.getMessage() == "short one"


def test_math_verify_parse_timeout_warning_is_shortened(caplog):
    from math_verify import parse

    shorten_long_log_messages()
    shorten_long_log_messages()  # idempotent
    assert sum(isinstance(f, ShortenLongMessages) for f in logging.getLogger("math_verify.parser").filters) == 1
    with caplog.at_level(logging.WARNING, logger="math_verify"):
        assert parse(SLOW_TO_PARSE + " and more text" * 1000, parsing_timeout=1) == []
    [record] = [record for record in caplog.records if "Timeout during parsing" in record.getMessage()]
    assert len(record.getMessage()) < LONGEST_LINE


def test_reward_worker_console_lines_are_short(capfd, monkeypatch):
    """End to end: a reward worker whose math-verify times out (after its own 5 s) prints one short line."""
    monkeypatch.setattr(reward, "_pool", None)  # a fresh pool, closed below
    response = r"\boxed{1} or " + SLOW_TO_PARSE + " and more text" * 1000  # two boxes: one parse of it all
    try:
        result = reward.compute_score("x", response, "3", timeout_s=12.0)
    finally:
        reward.shared_pool().close()
    assert (result["score"], result["reason"]) == (0.0, "no_answer")
    console = capfd.readouterr().err.splitlines()
    assert any("Timeout during parsing" in line for line in console)
    assert max(map(len, console)) < LONGEST_LINE
