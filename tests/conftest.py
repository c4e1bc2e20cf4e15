from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEDULES = sorted((ROOT / "schedules").glob("*.grow"))


@pytest.fixture
def errors():
    """errors(source) -> the error diagnostics the schedule gets (fails if it compiles)."""
    from growdsl.lang.errors import ScheduleError
    from growdsl.plan import plan_source

    def run(source: str):
        with pytest.raises(ScheduleError) as info:
            plan_source(source, "t.grow")
        found = info.value.errors
        assert found, "a ScheduleError must carry at least one error"
        return found

    return run
