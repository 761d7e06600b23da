"""Progress lines: done / total, percentage, rate from the first element and ETA; the final count line."""

import logging

from gristmill.pipelines import kit, score_random
from gristmill.scoring.random_score import RandomScoreConfig


def test_progress_line_has_total_percentage_rate_and_eta():
    progress = kit.Progress("documents read", total=1000, every_seconds=3600)
    progress.tick()                      # the clock starts at the first element, not at setup
    progress.start -= 10.0               # ... then 10 s pass while 199 more arrive
    progress.tick(199)
    line = progress.line()
    assert line.startswith("documents read: 200 of 1,000 (20.0%) at ")
    rate = float(line.split(" at ")[1].split("/s")[0])
    assert 19.8 < rate <= 19.9             # 199 documents after the first, in 10 s
    assert line.endswith("ETA 40 s")


def test_progress_without_total_says_count_and_rate_only():
    progress = kit.Progress("documents scored by embed", every_seconds=3600)
    progress.tick(5)
    assert progress.line() == "documents scored by embed: 5"   # no rate from one instant
    progress.start -= 2.0
    progress.tick(4)
    assert progress.line() == "documents scored by embed: 9 at 2.0/s"
    assert "ETA" not in progress.line()


def test_durations_read_like_a_person_writes_them():
    assert kit.duration(42) == "42 s"
    assert kit.duration(192) == "3 min 12 s"
    assert kit.duration(7500) == "2 h 05 min"


def test_a_job_knows_its_total_from_limit_or_an_input_manifest(tmp_path, embedded_glob, caplog):
    first = str(tmp_path / "random")
    score_random.run(["--input", embedded_glob, "--output", first, "--limit", "30", "--unit_records", "10"],
                     save_main_session=False)
    options, _, _ = kit.parse(["--input", first, "--output", str(tmp_path / "again")], RandomScoreConfig, "")
    assert kit.documents_in(options) == 30
    options, _, _ = kit.parse(["--input", embedded_glob, "--output", "x", "--limit", "7"], RandomScoreConfig, "")
    assert kit.documents_in(options) == 7
    options, _, _ = kit.parse(["--input", embedded_glob, "--output", "x"], RandomScoreConfig, "")
    assert kit.documents_in(options) is None            # raw JSON lines: unknown without reading them
    with caplog.at_level(logging.INFO, logger="gristmill"):
        score_random.run(["--input", first, "--output", str(tmp_path / "again")], save_main_session=False)
    done = [r.getMessage() for r in caplog.records
            if r.getMessage().startswith("done in ") and "again" in r.getMessage()]
    assert len(done) == 1 and "read 30" in done[0] and "units 3 (0 reused)" in done[0], done  # no rate under 1 s


def test_warnings_a_user_cannot_act_on_are_dropped():
    from gristmill import cli

    def record(message):
        return logging.LogRecord("x", logging.WARNING, __file__, 1, message, (), None)

    noise = cli._DropNoise()
    assert not noise.filter(record("Resource module is not available for current platform, memory usage ..."))
    assert not noise.filter(record("Given directory is read only=/tmp/run/checkpoints"))
    assert noise.filter(record("unit u: 3 dead-lettered"))
