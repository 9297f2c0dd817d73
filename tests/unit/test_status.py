"""`chute status`'s pure part: lag, rates, number formats and the rendered screen; and the watch
loop over a scripted source. Readings from real Kafka and ClickHouse are checked in
tests/e2e/test_observability.py."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from control_plane.cli import main
from control_plane.status import (
    CLEAR_SCREEN,
    PartitionState,
    PipelineState,
    Rates,
    Snapshot,
    StatusSettings,
    format_count,
    format_rate,
    rates,
    render,
    run,
)

TAKEN = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def pipeline(name: str = "events", ends: tuple[int, ...] = (100, 50),
             committed: tuple[int | None, ...] = (90, 50), rows: int | None = 140,
             dead_letters: int | None = 2, notes: tuple[str, ...] = ()) -> PipelineState:
    parts = tuple(PartitionState(i, 0, end, done)
                  for i, (end, done) in enumerate(zip(ends, committed, strict=True)))
    return PipelineState(name, name, parts, rows, dead_letters, notes)


def snapshot(at: float, *pipelines: PipelineState, problems: tuple[str, ...] = ()) -> Snapshot:
    return Snapshot(at, TAKEN, "chute-sync", pipelines, problems)


# --- lag ---------------------------------------------------------------------------------------


def test_lag_is_end_minus_committed() -> None:
    assert PartitionState(0, 0, 100, 90).lag == 10
    assert PartitionState(0, 0, 100, 100).lag == 0


def test_lag_without_a_commit_counts_from_the_earliest_offset() -> None:
    assert PartitionState(0, 0, 100, None).lag == 100
    assert PartitionState(0, 40, 100, None).lag == 60


def test_lag_after_retention_overtook_the_commit_counts_from_the_earliest_offset() -> None:
    assert PartitionState(0, 80, 100, 10).lag == 20


def test_pipeline_lag_sums_partitions_and_is_unknown_without_a_reading() -> None:
    assert pipeline().lag == 10
    assert pipeline().end_offset_sum == 150
    unread = PipelineState("events", "events", None, None, None)
    assert unread.lag is None and unread.end_offset_sum is None


# --- rates -------------------------------------------------------------------------------------


def test_rates_are_growth_per_second_between_readings() -> None:
    before = snapshot(10.0, pipeline(ends=(100, 50), rows=140))
    after = snapshot(12.0, pipeline(ends=(300, 250), rows=440))
    assert rates(before, after) == {"events": Rates(200.0, 150.0)}


def test_rates_are_unknown_on_the_first_reading_or_after_a_reset() -> None:
    first = snapshot(10.0, pipeline())
    assert rates(None, first) == {"events": Rates(None, None)}
    truncated = snapshot(11.0, pipeline(rows=0))
    assert rates(first, truncated)["events"] == Rates(0.0, None)
    unread = snapshot(12.0, PipelineState("events", "events", None, None, None))
    assert rates(first, unread)["events"] == Rates(None, None)
    new = snapshot(12.0, pipeline("clicks"))
    assert rates(first, new) == {"clicks": Rates(None, None)}


def test_number_formats() -> None:
    assert format_count(None) == "-"
    assert format_count(1234567) == "1,234,567"
    assert format_rate(None) == "-"
    assert format_rate(0.0) == "0"
    assert format_rate(2.25) == "2.2"
    assert format_rate(12_345.6) == "12,346"


# --- rendering ---------------------------------------------------------------------------------


def test_render_one_reading() -> None:
    text = render(snapshot(1.0, pipeline(), pipeline("clicks", (7,), (None,), 0, None)),
                  source="Kafka k:9092")
    assert text == (
        "chute status  group chute-sync  Kafka k:9092  2024-05-01 12:00:00 UTC\n"
        "\n"
        "PIPELINE  PARTITIONS  LAG  IN/S  OUT/S  ROWS  DEAD LETTERS\n"
        "events             2   10     -      -   140             2\n"
        "clicks             1    7     -      -     0             -\n"
        "\n"
        "  IN/S and OUT/S need two readings: use --watch\n"
    )


def test_render_with_rates_partitions_problems_and_notes() -> None:
    before = snapshot(0.0, pipeline(ends=(100, 50), rows=140))
    after = snapshot(
        2.0, pipeline(ends=(2_100, 50), committed=(2_000, 50), rows=2_140,
                      notes=("table default.events_dlq does not exist",)),
        problems=("ClickHouse 127.0.0.1:9000: NetworkError: refused",))
    lines = render(after, before, partitions=True, watch=2).splitlines()
    assert lines[1] == "refreshing every 2 s; Ctrl-C to stop"
    header, row, *rest = lines[3:]
    assert header.split() == ["PIPELINE", "PARTITIONS", "LAG", "IN/S", "OUT/S", "ROWS", "DEAD",
                              "LETTERS"]
    assert row.split() == ["events", "2", "100", "1,000", "1,000", "2,140", "2"]
    assert rest[:2] == ["    partition 0: end 2,100  committed 2,000  lag 100",
                        "    partition 1: end 50  committed 50  lag 0"]
    assert "! ClickHouse 127.0.0.1:9000: NetworkError: refused" in rest
    assert "  events: table default.events_dlq does not exist" in rest


def test_render_without_pipelines_says_where_to_look() -> None:
    assert "check CHUTE_SCHEMAS" in render(snapshot(0.0))


def test_columns_line_up_for_long_names_and_big_numbers() -> None:
    text = render(snapshot(0.0, pipeline("a_rather_long_pipeline_name", (10**9,), (0,), 10**9)))
    header, first = text.splitlines()[2:4]
    assert len(header) == len(first)
    assert first.endswith("2") and "1,000,000,000" in first


# --- the watch loop ----------------------------------------------------------------------------


class ScriptedSource:
    """Hands out prepared readings (the I/O seam of `run`)."""

    def __init__(self, *readings: Snapshot) -> None:
        self.readings = list(readings)
        self.settings = StatusSettings()
        self.closed = False

    def snapshot(self) -> Snapshot:
        return self.readings.pop(0)

    def close(self) -> None:
        self.closed = True


def test_run_once_prints_without_clearing_and_reports_problems_in_the_exit_code() -> None:
    out = io.StringIO()
    source = ScriptedSource(snapshot(0.0, pipeline(), problems=("Kafka: down",)))
    assert run(source, out) == 1
    assert not out.getvalue().startswith(CLEAR_SCREEN) and "! Kafka: down" in out.getvalue()
    assert source.closed


def test_watch_redraws_with_rates_from_the_previous_reading() -> None:
    out = io.StringIO()
    sleeps: list[float] = []
    source = ScriptedSource(snapshot(0.0, pipeline(rows=0)), snapshot(2.0, pipeline(rows=400)))
    code = run(source, out, watch=2.0, sleep=sleeps.append, refreshes=2)
    assert code == 0 and sleeps == [2.0] and source.closed
    screens = out.getvalue().split(CLEAR_SCREEN)
    assert screens[0] == "" and len(screens) == 3
    assert screens[1].splitlines()[4].split()[4] == "-"
    assert screens[2].splitlines()[4].split()[4] == "200"


def test_watch_stops_quietly_on_ctrl_c() -> None:
    def interrupt(_seconds: float) -> None:
        raise KeyboardInterrupt

    source = ScriptedSource(snapshot(0.0, pipeline()))
    assert run(source, io.StringIO(), watch=1.0, sleep=interrupt) == 0
    assert source.closed


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_watch_interval_must_be_positive_seconds(value: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["status", "--watch", value])
    assert exit_info.value.code == 2
    assert "--watch" in capsys.readouterr().err


def test_render_lists_the_workers_or_says_that_none_runs() -> None:
    from dataclasses import replace

    from chute.kafka import GroupMember, TopicPartition
    from chute.sync_status import PipelineReport

    members = (
        GroupMember("w1-a", "w1", "10.0.0.5", (TopicPartition("events", 0),
                                               TopicPartition("events", 1),
                                               TopicPartition("clicks", 0))),
        GroupMember("w2-b", "w2", "10.0.0.6", ()),
    )
    reports = (
        PipelineReport("w1", "clicks", "flowing", "", 0.0, TAKEN),
        PipelineReport("w1", "events", "paused", "schema error: No such column n", 42.0, TAKEN),
        PipelineReport("gone", "events", "failed", "an old worker", 1.0, TAKEN),
    )
    text = render(replace(snapshot(1.0, pipeline()), workers=members, reports=reports))
    assert (
        "WORKER  HOST      PIPELINES            ASSIGNED PARTITIONS\n"
        "w1      10.0.0.5  1 flowing, 1 paused  clicks:0 events:0,1\n"
        "w2      10.0.0.6  (no report yet)      (none assigned)\n"
        "! w1: pipeline events paused for 42s: schema error: No such column n\n") in text
    assert "gone" not in text  # not a member of the group: its report is not current
    none = render(replace(snapshot(1.0, pipeline()), workers=()))
    assert "! no sync worker runs in group chute-sync" in none
    unread = render(snapshot(1.0, pipeline()))
    assert "WORKER" not in unread and "no sync worker" not in unread
