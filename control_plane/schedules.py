"""When a cron schedule runs, computed by the code Prefect's scheduler runs, and what daylight
saving time does to it, in words.

Prefect reads a cron schedule in local wall time and places each time with the first offset
that has it: a time a spring-forward day does not have moves forward by the gap (02:30 becomes
03:30), onto a run already due there if there is one (then the day has one run fewer); a time
a fall-back day has twice runs once, at the first.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from cron_descriptor import Options, get_description
from prefect._vendor.croniter import croniter  # the one Prefect's scheduler reads crons with
from prefect.server.schemas.schedules import CronSchedule

_DAY = timedelta(days=1)
HORIZON = timedelta(days=366)  # how far create and PATCH look for what DST does to a schedule
PREVIEW_COUNT = 10  # runs a preview shows by default
MAX_PREVIEW = 100
FIRST_YEAR, LAST_YEAR = 1900, 2199  # of a preview's start: its runs stay within the calendar


@dataclass(frozen=True)
class Transition:
    """A change of the zone's offset from UTC at `at`."""

    at: datetime  # UTC
    before: timedelta
    after: timedelta

    @property
    def gap(self) -> timedelta:
        """Positive when clocks go forward (wall times are skipped), negative when they go back
        (wall times happen twice)."""
        return self.after - self.before

    def wall(self, offset: timedelta) -> datetime:
        """The transition's instant as a naive wall time with `offset`."""
        return (self.at + offset).replace(tzinfo=None)


@dataclass(frozen=True)
class Effect:
    """What one transition does to the schedule: `runs` are the UTC times it concerns."""

    message: str
    runs: tuple[datetime, ...]
    warns: bool  # a run moved, skipped or not repeated; not only a longer or shorter interval


@dataclass(frozen=True)
class PlannedRun:
    at: datetime  # UTC
    local: datetime  # in the schedule's zone
    dst: str | None  # what daylight saving time does to it


def upcoming(schedule: str, timezone: str, count: int, start: datetime) -> list[datetime]:
    """The next `count` times Prefect's scheduler creates runs for, on or after `start`, UTC.

    Prefect's generator can yield a run moved forward by a gap after a later one (a 30-minute
    gap in Australia/Lord_Howe); its scheduler asks for more and creates both, so ask for more
    and sort."""
    dates = CronSchedule(cron=schedule, timezone=timezone)._get_dates_generator(
        n=count + _REORDERED, start=start
    )
    return sorted(_utc(date) for date in dates)[:count]


_REORDERED = 8  # more than a gap's moved runs can overtake


@lru_cache(maxsize=4096)  # connectors share few schedules; callers round `after` to the minute
def next_fire(schedule: str, timezone: str, after: datetime) -> datetime:
    """When the schedule fires next after `after` (on a minute), in UTC."""
    [first] = upcoming(schedule, timezone, 1, after + timedelta(minutes=1))
    return first


def effects(
    schedule: str, timezone: str, start: datetime, end: datetime, years: set[int] | None = None
) -> list[Effect]:
    """What each offset change of the zone between `start` and `end` does to the schedule;
    only in `years` when given (a preview of a yearly schedule spans a century)."""
    zone = ZoneInfo(timezone)
    found = []
    for year in sorted(years or range(start.year, end.year + 1)):
        for transition in transitions_in(timezone, year):
            if start <= transition.at < end and (effect := _effect(schedule, zone, transition)):
                found.append(effect)
    return found


def warnings(schedule: str | None, timezone: str, start: datetime) -> list[str]:
    """What DST does to the schedule's runs within `HORIZON` of `start`: moved, skipped, not
    repeated. Longer or shorter intervals alone are no warning (a daily run across a
    transition is 23 or 25 hours after the one before); the preview shows them."""
    if schedule is None:
        return []
    try:
        return list(_warnings(schedule, timezone, start.replace(minute=0, second=0, microsecond=0)))
    except ValueError:  # stored before the checks asked Prefect too: it reads, and says so
        return [f"Prefect does not take {schedule!r} in {timezone}: change them to activate"]


@lru_cache(maxsize=1024)  # connectors share few schedules and zones; start is on the hour
def _warnings(schedule: str, timezone: str, start: datetime) -> tuple[str, ...]:
    CronSchedule(cron=schedule, timezone=timezone)  # raises if Prefect does not take them
    found = effects(schedule, timezone, start, start + HORIZON)
    return tuple(effect.message for effect in found if effect.warns)


@lru_cache(maxsize=1024)
def transitions_in(timezone: str, year: int) -> tuple[Transition, ...]:
    """Every change of the zone's offset in the (UTC) year, to the minute."""
    start, end = datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)
    return tuple(_transitions(ZoneInfo(timezone), start, end))


def _transitions(zone: ZoneInfo, start: datetime, end: datetime) -> list[Transition]:
    found = []
    offset = _offset(zone, start)
    moment = start
    while moment < end:
        following = min(moment + _DAY, end)
        if (changed := _offset(zone, following)) != offset:
            low, high = moment, following  # the offset changes in (low, high]
            while high - low > timedelta(minutes=1):
                middle = low + (high - low) / 2
                low, high = (middle, high) if _offset(zone, middle) == offset else (low, middle)
            found.append(Transition(high.replace(second=0, microsecond=0), offset, changed))
            offset = changed
        moment = following
    return found


def _effect(schedule: str, zone: ZoneInfo, transition: Transition) -> Effect | None:
    forward = transition.gap > timedelta(0)
    size = abs(transition.gap)
    # Forward: the wall times [start, start + size) do not exist. Back: they happen twice,
    # first with the old offset, then with the new one.
    start = transition.wall(transition.before if forward else transition.after)
    hit = _wall_times(schedule, start, start + size)
    shown = "%H:%M" if size < _DAY else "%a %d %b %H:%M"  # Pacific/Apia skipped a whole day
    direction = "forward" if forward else "back"
    old, new = (start, start + size) if forward else (start + size, start)
    clocks = f"clocks go {direction} from {old:{shown}} to {new:{shown}}"
    where = f"on {start:%a %d %b %Y} in {zone.key} ({clocks})"
    if not hit:
        return _interval_effect(schedule, zone, transition, where)
    times = _times(hit, shown)
    one = len(hit) == 1
    if forward:
        # Prefect moves them forward by the gap, onto runs already due there if any.
        placed = _prefect_between(schedule, zone, transition.at, transition.at + size)
        moved = {time + size for time in hit}
        runs = tuple(run for run in placed if _wall(run, zone) in moved)
        fewer = len(hit) + len(_wall_times(schedule, start + size, start + 2 * size)) - len(placed)
        what = f"{times} {'does' if one else 'do'} not exist {where}"
        if fewer == 0:
            message = (
                f"{what}: Prefect runs {'it' if one else 'them'} at {_times(sorted(moved), shown)}"
            )
        else:
            message = (
                f"{what}: Prefect moves {'its run' if one else 'their runs'} forward by "
                f"{_duration(size)}, onto runs already due, so that day has {fewer} "
                f"run{'' if fewer == 1 else 's'} fewer"
            )
        return Effect(message, runs, warns=True)
    # Prefect places a time that happens twice with the old offset only (`fold=0`).
    first = _prefect_between(schedule, zone, transition.at - size, transition.at)
    zone_name = (transition.at - size).astimezone(zone).tzname()
    message = (
        f"{times} {'happens' if one else 'happen'} twice {where}: Prefect runs "
        f"{'it' if one else 'each'} once, at the first ({zone_name})"
    )
    return Effect(message, tuple(first), warns=True)


def _interval_effect(
    schedule: str, zone: ZoneInfo, transition: Transition, where: str
) -> Effect | None:
    """The runs on either side of the transition, when their wall times are further apart or
    closer than they are."""
    wall = transition.wall(transition.before)
    previous = croniter(schedule, wall).get_prev(datetime)  # no DST effect: nothing was hit
    [before] = upcoming(schedule, zone.key, 1, previous.replace(tzinfo=zone))
    [after] = upcoming(schedule, zone.key, 1, transition.at)
    elapsed = after - before
    apart = _wall(after, zone) - _wall(before, zone)
    if elapsed == apart:
        return None
    message = (
        f"{where}: the run of {after.astimezone(zone):%a %d %b %H:%M} comes "
        f"{_duration(elapsed)} after the one before, not {_duration(apart)}"
    )
    return Effect(message, (after,), warns=False)


def _prefect_between(
    schedule: str, zone: ZoneInfo, start: datetime, end: datetime
) -> list[datetime]:
    """Prefect's run times in [start, end), UTC."""
    dates = CronSchedule(cron=schedule, timezone=zone.key)._get_dates_generator(
        start=start, end=end - timedelta(microseconds=1)
    )
    return [_utc(date) for date in dates]


def _wall_times(schedule: str, start: datetime, end: datetime) -> list[datetime]:
    """The schedule's naive wall times in [start, end)."""
    times = croniter(schedule, start - timedelta(seconds=1))
    found = []
    while (time := times.get_next(datetime)) < end:
        found.append(time)
    return found


def _wall(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.astimezone(zone).replace(tzinfo=None)


def _times(walls: list[datetime], layout: str) -> str:
    shown = [f"{wall:{layout}}" for wall in walls]
    if len(shown) > 3:
        return f"{len(shown)} run times from {shown[0]} to {shown[-1]}"
    return " and ".join(shown)


def _duration(value: timedelta) -> str:
    minutes = int(value.total_seconds() // 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{hours} h"] if hours else []
    if minutes or not parts:
        parts.append(f"{minutes} min")
    return " ".join(parts)


def _offset(zone: ZoneInfo, moment: datetime) -> timedelta:
    offset = moment.astimezone(zone).utcoffset()
    assert offset is not None
    return offset


def _utc(date: datetime) -> datetime:
    return datetime.fromtimestamp(date.timestamp(), UTC)


def preview(schedule: str, timezone: str, count: int, start: datetime) -> list[PlannedRun]:
    """The next `count` runs Prefect's scheduler creates on or after `start`, each with what
    DST does to it."""
    runs = upcoming(schedule, timezone, count, start)
    if not runs:
        return []
    # A transition a day either side of the runs can still move one or lengthen its interval.
    around = [run + shift for run in runs for shift in (-_DAY, _DAY)]
    notes: dict[datetime, str] = {}
    years = {moment.year for moment in around}
    for effect in effects(schedule, timezone, runs[0] - _DAY, runs[-1] + _DAY, years):
        for run in effect.runs:
            notes.setdefault(run, effect.message)
    zone = ZoneInfo(timezone)
    return [PlannedRun(run, run.astimezone(zone), notes.get(run)) for run in runs]


@lru_cache(maxsize=4096)  # reconcile describes every connector on each pass
def in_words(cron: str | None, timezone: str) -> str:
    """The schedule as a person says it, e.g. "every 4 hours (UTC)"; a connector without one
    runs "only when triggered"."""
    if cron is None:
        return "only when triggered"
    # English whatever the process's locale: the words go into a spec that reconcile compares.
    options = Options(use_24hour_time_format=True, locale_code="en_US")
    words = get_description(cron, options)
    return f"{words[:1].lower()}{words[1:]} ({timezone})"
