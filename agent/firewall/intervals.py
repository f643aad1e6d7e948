"""Disjoint decomposition of boxes of inclusive integer intervals (pure).

Owns turning overlapping rule matches into the canonical, non-overlapping elements an nft
interval set needs (the kernel's pipapo and rbtree sets refuse overlapping elements). A box is a
tuple of ``(lo, hi)`` pairs, one per dimension (e.g. address range, protocol, port range). The
output depends only on the union of the input, never on the order rules were added, so two
renders of the same rules give the same elements and the applier can diff them element by
element for incremental updates.
"""
from __future__ import annotations

from typing import Iterable, Sequence

Interval = tuple[int, int]
Box = tuple[Interval, ...]


def merge_1d(intervals: Iterable[Interval]) -> list[Interval]:
    """Union of 1-D inclusive intervals as sorted, disjoint, non-adjacent intervals."""
    out: list[list[int]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1][1] = hi
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def decompose(boxes: Sequence[Box]) -> list[Box]:
    """Disjoint boxes covering exactly the union of ``boxes``, sorted, adjacent ones merged.

    Sweeps the first dimension over its boundary points; each elementary segment gets the
    decomposition of the boxes covering it in the remaining dimensions, and consecutive
    segments with identical sub-decompositions are merged.
    """
    if not boxes:
        return []
    dims = len(boxes[0])
    if dims == 1:
        return [(iv,) for iv in merge_1d(b[0] for b in boxes)]
    starts: dict[int, list[int]] = {}
    ends: dict[int, list[int]] = {}
    for i, b in enumerate(boxes):
        starts.setdefault(b[0][0], []).append(i)
        ends.setdefault(b[0][1] + 1, []).append(i)
    points = sorted(set(starts) | set(ends))
    active: set[int] = set()
    out: list[Box] = []
    run_lo: int | None = None
    run_sub: list[Box] | None = None
    prev_end: int | None = None

    def flush(hi: int) -> None:
        if run_sub:
            out.extend(((run_lo, hi),) + sub for sub in run_sub)  # type: ignore[arg-type]

    for k, p in enumerate(points):
        for i in ends.get(p, ()):
            active.discard(i)
        for i in starts.get(p, ()):
            active.add(i)
        if k + 1 == len(points):
            break
        seg_lo, seg_hi = p, points[k + 1] - 1
        if len(active) == 1:  # the common case (disjoint rules): no recursion needed
            sub = [boxes[next(iter(active))][1:]]
        else:
            sub = decompose([boxes[i][1:] for i in sorted(active)]) if active else []
        if run_sub is not None and sub == run_sub and prev_end == seg_lo - 1:
            prev_end = seg_hi
            continue
        if run_sub is not None and prev_end is not None:
            flush(prev_end)
        run_lo, run_sub, prev_end = seg_lo, sub, seg_hi
    if run_sub is not None and prev_end is not None:
        flush(prev_end)
    return out


def intersects(a: Box, b: Box) -> bool:
    return all(alo <= bhi and blo <= ahi for (alo, ahi), (blo, bhi) in zip(a, b))


def canonical(boxes: Sequence[Box]) -> list[Box]:
    """The elements for a set of rule boxes: boxes that overlap nothing else stay as they are;
    each group of overlapping boxes (connected by intersection) is replaced by its disjoint
    decomposition. Depends only on the set of boxes, and is local: adding or removing a box that
    intersects no other box adds or removes exactly that element (the applier's fast path)."""
    uniq = sorted(set(boxes))
    parent = list(range(len(uniq)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    order = sorted(range(len(uniq)), key=lambda i: uniq[i][0])
    open_: list[int] = []  # boxes whose first-dimension interval may still intersect
    for i in order:
        lo = uniq[i][0][0]
        open_ = [j for j in open_ if uniq[j][0][1] >= lo]
        for j in open_:
            if intersects(uniq[i], uniq[j]):
                parent[find(i)] = find(j)
        open_.append(i)
    groups: dict[int, list[Box]] = {}
    for i, b in enumerate(uniq):
        groups.setdefault(find(i), []).append(b)
    out: list[Box] = []
    for members in groups.values():
        out.extend(members if len(members) == 1 else decompose(members))
    return sorted(out)


def covers(boxes: Sequence[Box], point: Sequence[int]) -> bool:
    """True when ``point`` lies in one of ``boxes`` (reference check used by tests)."""
    return any(all(lo <= x <= hi for (lo, hi), x in zip(b, point)) for b in boxes)
