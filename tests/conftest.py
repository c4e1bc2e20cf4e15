import random
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


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A prepared corpus (vocab 400) for training tests."""
    from growdsl.runtime.data import prepare

    root = tmp_path_factory.mktemp("text")
    rng = random.Random(0)  # a Markov chain over 150 words, 4 likely successors each: learnable, not trivial
    words = [f"w{i}" for i in range(150)]
    successors = {w: rng.sample(words, 4) for w in words}
    for i in range(8):
        word, text = rng.choice(words), []
        for j in range(1500):
            text.append(word)
            word = rng.choice(successors[word])
            if j % 60 == 59:
                text.append("\n\n")
        (root / f"doc{i}.txt").write_text(" ".join(text))
    prepare([root], root / "prepared", vocab_size=400, holdout=0.2)
    return root / "prepared"
