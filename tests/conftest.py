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


def markov_text(root: Path, seed: int, documents: int = 8, words_each: int = 1500) -> Path:
    """Documents of a Markov chain over 150 words, 4 likely successors each (learnable, not trivial);
    each seed its own chain over the same words."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(150)]
    successors = {w: rng.sample(words, 4) for w in words}
    for i in range(documents):
        word, text = rng.choice(words), []
        for j in range(words_each):
            text.append(word)
            word = rng.choice(successors[word])
            if j % 60 == 59:
                text.append("\n\n")
        (root / f"doc{i}.txt").write_text(" ".join(text))
    return root


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A prepared corpus (vocab 400) for training tests."""
    from growdsl.data.prepare import prepare

    root = markov_text(tmp_path_factory.mktemp("text"), seed=0)
    prepare([root], root / "prepared", vocab_size=400, holdout=0.2)
    return root / "prepared"


@pytest.fixture(scope="session")
def mixture_dirs(data_dir, tmp_path_factory):
    """Three prepared folders of one tokenizer (data_dir's) and different text, of different sizes."""
    from growdsl.data.prepare import prepare

    folders = [data_dir]
    for seed, documents in ((1, 3), (2, 5)):
        root = markov_text(tmp_path_factory.mktemp(f"text{seed}"), seed, documents)
        prepare([root], root / "prepared", holdout=0.2, tokenizer=str(data_dir / "tokenizer.json"))
        folders.append(root / "prepared")
    return folders
