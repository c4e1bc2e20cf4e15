"""Depth layer maps: target layer i takes source layer m[i] (0-based).

G_stack, interpolation and the paper's partial-stacking notation all resolve to such a map, and
the connection rate R_c is a property of the map alone."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MAX_LAYERS = 4096  # far beyond any real model; keeps a typo like *99999999 from eating memory


class PatternError(ValueError):
    """A malformed pattern; `start`/`length` index into the pattern text."""

    def __init__(self, message: str, start: int, length: int = 1, hint: str | None = None):
        super().__init__(message)
        self.message, self.start, self.length, self.hint = message, start, length, hint


def gstack(layers: int, factor: int) -> list[int]:
    """The whole model repeated `factor` times: 0 1 2 0 1 2."""
    return [i % layers for i in range(layers * factor)]


def interpolation(layers: int, factor: int) -> list[int]:
    """Every layer repeated in place: 0 0 1 1 2 2."""
    return [i // factor for i in range(layers * factor)]


PLACEMENTS = ("after every", "middle", "top", "bottom")


def placed(where: str, size: int, times: int, layers: int) -> list[int]:
    """A named placement's map over a `layers`-deep model; `times`: how often the named layers appear.

    after every k: each k-th layer followed by its copies (LLaMA-Pro: 1234 4 5678 8);
    middle b: the middle block of b layers (the lower middle when it cannot be centred) repeated in
    place (MIDAS); top b / bottom b: the top or bottom b layers repeated in place."""
    assert where in PLACEMENTS and 1 <= size <= layers and times >= 2, (where, size, times, layers)
    if where == "after every":
        return [i for i in range(layers) for _ in range(times if (i + 1) % size == 0 else 1)]
    start = {"middle": (layers - size) // 2, "top": layers - size, "bottom": 0}[where]
    block = list(range(start, start + size))
    return list(range(start)) + block * times + list(range(start + size, layers))


_BLOCK = re.compile(r"(?P<range>(?P<a>[0-9]+)\.\.(?P<b>[0-9]+))|(?P<digits>[0-9]+)")


@dataclass(frozen=True)
class _Layer:
    index: int  # 1-based, as written
    start: int
    length: int


def parse_pattern(text: str, base_layers: int) -> list[int]:
    """The paper's partial-stacking notation over a `base_layers`-deep model, as a 0-based map.

    Segments are separated by '-' and placed bottom to top. A segment is a block of base layers,
    numbered from 1 (each digit one layer: `3456`; or a range for deep bases: `7..12`), optionally
    repeated as a block: `3456*5` is 3456 3456 3456 3456 3456. `12-3456*5-56` over 6 layers gives
    0 1 (2 3 4 5)x5 4 5."""
    if not text.strip():
        raise PatternError("empty pattern", 0, max(1, len(text)), 'write segments such as "123456*4" or "12-3456*5-56"')
    out: list[int] = []
    pos = 0
    for segment in text.split("-"):
        out += _parse_segment(segment, pos, base_layers, MAX_LAYERS - len(out))
        pos += len(segment) + 1
    return out


def _parse_segment(segment: str, offset: int, base_layers: int, room: int) -> list[int]:
    body, star, count = segment.partition("*")
    lead = len(body) - len(body.lstrip())
    block = body.strip()
    if not block:
        what = "a '-' with nothing beside it" if not star else "'*' without a block of layers before it"
        raise PatternError(
            f"empty segment: {what}",
            offset,
            max(1, len(segment)),
            "each segment names base layers, e.g. 3456 or 3456*5",
        )
    layers = _parse_block(block, offset + lead, base_layers)
    repeat = 1
    if star:
        count_text = count.strip()
        count_at = offset + len(body) + 1
        if not count_text.isdigit():
            what = f"'{count_text}'" if count_text else "nothing"
            raise PatternError(
                f"'*' must be followed by a repeat count, found {what}",
                count_at,
                max(1, len(count)),
                "write the count as a whole number: 3456*5",
            )
        repeat = int(count_text)
        if repeat < 1:
            raise PatternError("a block must repeat at least once", count_at, len(count), "use *1 or more")
    if len(layers) * repeat > room:
        raise PatternError(f"the pattern makes more than {MAX_LAYERS} layers", offset, max(1, len(segment)))
    return [layer.index - 1 for layer in layers] * repeat


def _parse_block(block: str, offset: int, base_layers: int) -> list[_Layer]:
    layers: list[_Layer] = []
    pos = 0
    while pos < len(block):
        m = _BLOCK.match(block, pos)
        if not m:
            raise PatternError(
                f"unexpected {block[pos]!r} in pattern",
                offset + pos,
                1,
                "a pattern holds layer digits, '..' ranges, '-' between segments and '*' counts",
            )
        if m["range"]:
            a, b = int(m["a"]), int(m["b"])
            if b > base_layers:
                raise PatternError(
                    f"layer {b} does not exist: the base has {base_layers} layers",
                    offset + pos,
                    len(m[0]),
                    f"the base has layers 1..{base_layers}",
                )
            if a > b:
                raise PatternError(f"range {a}..{b} runs backwards", offset + pos, len(m[0]), f"write {b}..{a}")
            layers += [_Layer(i, offset + pos, len(m[0])) for i in range(a, b + 1)]
        else:
            layers += [_Layer(int(d), offset + pos + i, 1) for i, d in enumerate(m["digits"])]
        pos = m.end()
    for layer in layers:
        if layer.index == 0:
            raise PatternError(
                "layer 0 does not exist: base layers are numbered from 1",
                layer.start,
                layer.length,
                f"the base has layers 1..{base_layers}",
            )
        if layer.index > base_layers:
            hint = f"the base has layers 1..{base_layers}"
            if base_layers >= 10:
                hint += "; write layers above 9 as ranges, e.g. 1..12"
            raise PatternError(
                f"layer {layer.index} does not exist: the base has {base_layers} layers",
                layer.start,
                layer.length,
                hint,
            )
    return layers


def connection_rate(layer_map: list[int]) -> Fraction:
    """R_c: the share of adjacent target-layer pairs (i, i+1) that were adjacent in the base (m, m+1).

    3 -> 6 layers: G_stack 0 1 2 0 1 2 keeps 4 of 5 connections (80%); interpolation 0 0 1 1 2 2
    keeps 2 of 5 (40%)."""
    pairs = len(layer_map) - 1
    if pairs <= 0:
        return Fraction(1)
    kept = sum(1 for a, b in zip(layer_map, layer_map[1:]) if b == a + 1)
    return Fraction(kept, pairs)


def _segments(layer_map: list[int]) -> list[tuple[list[int], int]]:
    """The map as (ascending run of consecutive layers, repeat count) pairs, bottom to top."""
    runs: list[list[int]] = []
    for src in layer_map:
        if runs and src == runs[-1][-1] + 1:
            runs[-1].append(src)
        else:
            runs.append([src])
    segments: list[tuple[list[int], int]] = []
    for run in runs:
        if segments and segments[-1][0] == run:
            segments[-1] = (run, segments[-1][1] + 1)
        else:
            segments.append((run, 1))
    return segments


def pattern_of(layer_map: list[int]) -> str:
    """The map in the paper's notation (1-based), runs of a repeated block folded with '*'."""
    return "-".join(_block_text(run) + (f"*{n}" if n > 1 else "") for run, n in _segments(layer_map))


def _block_text(run: list[int]) -> str:
    if all(s < 9 for s in run):
        return "".join(str(s + 1) for s in run)
    return f"{run[0] + 1}..{run[-1] + 1}"


def compact(layer_map: list[int]) -> str:
    """A short 0-based rendering for tables: `(0-5)x4`, `0-1 (2-5)x5 4-5`, `0-5 each x2`."""
    n = len(layer_map)
    for factor in range(2, n + 1):
        if n % factor == 0 and layer_map == interpolation(n // factor, factor):
            return f"{_range_text(list(range(n // factor)))} each x{factor}"
    return " ".join(
        f"({_range_text(run)})x{count}" if count > 1 else _range_text(run) for run, count in _segments(layer_map)
    )


def _range_text(idx: list[int]) -> str:
    return str(idx[0]) if len(idx) == 1 else f"{idx[0]}-{idx[-1]}"
