"""How many operations a compiled XLA program runs per call, read from its HLO text.

A GPU step made of thousands of tiny kernels is bound by launching them, not
by arithmetic; a ``lax.scan`` runs its body once per iteration, so an
operation inside a loop of four counts four times. :func:`census` walks the
optimised HLO (``jax.jit(f).lower(...).compile().as_text()``) from the entry
computation: every executed instruction counts once, a fusion counts as one
kernel (named by the operation at its root), a ``while`` loop counts its body
times its known trip count, a ``conditional`` its largest branch, a ``call``
what it calls. Bookkeeping that moves no data (parameters, constants,
tuples, bitcasts) is not counted.

The count is read off the program of whichever backend compiled it: the CPU's
is a proxy for the GPU's (both fuse elementwise work into its producers and
keep every scanned slice and update as its own operation), not a copy of it.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from collections.abc import Mapping

# Instructions that run no kernel and move no data.
_FREE = frozenset({
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
    "add-dependency", "opt-barrier", "partition-id", "replica-id", "domain",
})
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_NAME = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*")
_TRIP_COUNT = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')
_CALLEE = {key: re.compile(rf"\b{key}=%?([\w.\-]+)") for key in
           ("calls", "body", "condition", "to_apply", "true_computation", "false_computation")}
_BRANCHES = re.compile(r"\bbranch_computations=\{([^}]*)\}")


@dataclasses.dataclass(frozen=True)
class Instruction:
    name: str
    opcode: str
    line: str


@dataclasses.dataclass(frozen=True)
class Census:
    """Operations one call of a compiled program runs.

    ``by_kind`` maps each kind (an opcode; a fusion as ``fusion:<root
    opcode>``; a custom call as ``custom-call:<target>``) to how many times it
    runs per call. ``loop_iterations`` sums the trip counts of every loop
    run (a loop inside a loop once per outer iteration); ``unknown_trip_counts``
    counts loops whose trip count XLA did not know, counted as one iteration.
    """

    by_kind: Mapping[str, int]
    loop_iterations: int
    unknown_trip_counts: int

    @property
    def operations(self) -> int:
        return sum(self.by_kind.values())

    def count(self, prefix: str) -> int:
        """Operations of the kinds that start with ``prefix`` (``"fusion:dynamic-update-slice"``)."""
        return sum(n for kind, n in self.by_kind.items() if kind.startswith(prefix))


def _type_end(rest: str) -> int:
    """Where the result type at the start of ``rest`` ends: a tuple type
    ``(...)`` (which holds spaces) at its closing parenthesis, else at a space."""
    if not rest.startswith("("):
        return rest.find(" ")
    depth = 0
    for index, ch in enumerate(rest):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return index + 1
    return len(rest)


def _opcode(rest: str) -> str:
    """The opcode of an instruction's right-hand side (after ``name = ``)."""
    match = re.match(r"\s*([\w\-]+)\(", rest[_type_end(rest):])
    if match is None:
        raise ValueError(f"census: cannot read the opcode of HLO instruction {rest[:120]!r}")
    return match.group(1)


def parse_computations(hlo_text: str) -> tuple[dict[str, list[Instruction]], str]:
    """``({computation name: instructions}, entry name)`` of an HLO module's text."""
    computations: dict[str, list[Instruction]] = {}
    entry = None
    current: list[Instruction] | None = None
    for line in hlo_text.splitlines():
        if current is None:
            header = _HEADER.match(line)
            if header and not line.startswith("HloModule"):
                current = computations.setdefault(header.group(2), [])
                if header.group(1):
                    entry = header.group(2)
            continue
        if line.strip() == "}":
            current = None
            continue
        name = _NAME.match(line)
        if name:
            current.append(Instruction(name.group(1), _opcode(line[name.end():]), line))
    if entry is None:
        raise ValueError("census: the HLO text has no ENTRY computation")
    return computations, entry


def census(hlo_text: str) -> Census:
    """Counts the operations one call of the compiled program ``hlo_text`` runs."""
    computations, entry = parse_computations(hlo_text)

    def callee(instruction: Instruction, key: str) -> list[Instruction]:
        match = _CALLEE[key].search(instruction.line)
        if match is None or match.group(1) not in computations:
            raise ValueError(f"census: {instruction.opcode} {instruction.name} names no "
                             f"{key} computation that the module defines")
        return computations[match.group(1)]

    memo: dict[int, tuple[collections.Counter, int, int]] = {}

    def walk(body: list[Instruction]) -> tuple[collections.Counter, int, int]:
        key = id(body)
        if key in memo:
            return memo[key]
        kinds: collections.Counter = collections.Counter()
        iterations = unknown = 0
        for ins in body:
            if ins.opcode in _FREE:
                continue
            if ins.opcode == "while":
                trips = _TRIP_COUNT.search(ins.line)
                n = int(trips.group(1)) if trips else 1
                unknown += trips is None
                inner, inner_iterations, inner_unknown = walk(callee(ins, "body"))
                for kind, count in inner.items():
                    kinds[kind] += n * count
                iterations += n + n * inner_iterations
                unknown += n * inner_unknown
            elif ins.opcode == "call":
                inner, inner_iterations, inner_unknown = walk(callee(ins, "to_apply"))
                kinds.update(inner)
                iterations += inner_iterations
                unknown += inner_unknown
            elif ins.opcode == "conditional":
                branches = _BRANCHES.search(ins.line)
                names = ([n.strip().lstrip("%") for n in branches.group(1).split(",")]
                         if branches else None)
                bodies = ([computations[n] for n in names] if names else
                          [callee(ins, "true_computation"), callee(ins, "false_computation")])
                walked = [walk(b) for b in bodies]
                inner, inner_iterations, inner_unknown = max(
                    walked, key=lambda w: sum(w[0].values()))
                kinds.update(inner)
                iterations += inner_iterations
                unknown += inner_unknown
            elif ins.opcode == "fusion":
                root = next((i for i in reversed(callee(ins, "calls"))
                             if " ROOT " in f" {i.line.lstrip()}"), None)
                kinds[f"fusion:{root.opcode if root else '?'}"] += 1
            elif ins.opcode == "custom-call":
                target = re.search(r'custom_call_target="([^"]+)"', ins.line)
                kinds[f"custom-call:{target.group(1) if target else '?'}"] += 1
            else:
                kinds[ins.opcode] += 1
        memo[key] = (kinds, iterations, unknown)
        return memo[key]

    kinds, iterations, unknown = walk(computations[entry])
    return Census(dict(kinds), iterations, unknown)
