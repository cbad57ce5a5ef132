"""The rules of backgammon (no doubling cube), from the side of the player to move.

A position is a tuple of 28 integers laid out as Tesauro's pubeval takes it, always from
the point of view of the player to move ("we"): `pos[1..24]` are the points, ours
positive and the opponent's negative; we move from 24 down to 1 and bear off below 1,
the opponent moves up. `pos[25]` holds our checkers on the bar (positive), `pos[0]` the
opponent's (negative), `pos[26]` ours borne off (positive), `pos[27]` the opponent's
(negative). `flip` turns a position round for the other player.

A roll must be played in full when it can be: as many dice as possible, and when only
one of two different dice can be played, the larger if it can. `moves` gives each
distinct resulting position once, with one way of playing it in the usual notation
(`24/18 13/11`, `bar/22`, `6/off`), in a fixed order.
"""

from __future__ import annotations

import base64

Position = tuple[int, ...]
BAR, OUR_OFF, THEIR_OFF, THEIR_BAR = 25, 26, 27, 0
CHECKERS = 15
START: Position = (0, -2, 0, 0, 0, 0, 5, 0, 3, 0, 0, 0, -5,
                   5, 0, 0, 0, -3, 0, -5, 0, 0, 0, 0, 2, 0, 0, 0)
Step = tuple[int, int]  # (from, to): from 25 is the bar, to 0 is off


def flip(pos: Position) -> Position:
    """The same position from the other player's side."""
    return (*(-pos[25 - i] for i in range(26)), -pos[THEIR_OFF], -pos[OUR_OFF])


def winner_moved(pos: Position) -> bool:
    """Whether we have borne off every checker (the game is ours)."""
    return pos[OUR_OFF] == CHECKERS


def is_race(pos: Position) -> bool:
    """No contact: every checker of ours is past every checker of theirs."""
    ours = [p for p in range(1, 26) if pos[p] > 0]
    theirs = [p for p in range(0, 25) if pos[p] < 0]
    return not ours or not theirs or max(ours) < min(theirs)


def pips(pos: Position) -> int:
    """Our pip count: how far our checkers have to go."""
    return sum(p * pos[p] for p in range(1, 26) if pos[p] > 0)


def _step(pos: Position, start: int, die: int) -> Position | None:
    """Move one checker of ours from `start` by `die`, or None when the rules forbid it."""
    if pos[start] <= 0:
        return None
    target = start - die
    board = list(pos)
    if target >= 1:
        if board[target] < -1:
            return None  # a point the opponent holds
        if board[target] == -1:  # a blot: hit it
            board[target] = 0
            board[THEIR_BAR] -= 1
        board[start] -= 1
        board[target] += 1
        return tuple(board)
    if any(board[p] > 0 for p in range(7, 26)):
        return None  # bearing off needs every checker home
    if target < 0 and any(board[p] > 0 for p in range(start + 1, 7)):
        return None  # a larger die bears off from below only the highest point
    board[start] -= 1
    board[OUR_OFF] += 1
    return tuple(board)


def _plays(pos: Position, dice: tuple[int, ...]) -> dict[Position, tuple[Step, ...]]:
    """Every position reached by playing as many of the dice, in this order, as can be
    played, each with one way to reach it. Depth by depth, so that positions reached by
    several orders are expanded once; with doubles, checkers are moved from high points to
    low (each step starts no higher than the one before), which reaches every position the
    other orders reach (tested against the full search)."""
    frontier: dict[tuple[Position, int], tuple[Step, ...]] = {(pos, BAR): ()}
    double = len(set(dice)) == 1
    for die in dice:
        reached: dict[tuple[Position, int], tuple[Step, ...]] = {}
        for (board, last), steps in frontier.items():
            top = last if double else BAR
            starts = [BAR] if board[BAR] > 0 else \
                [p for p in range(min(top, 24), 0, -1) if board[p] > 0]
            for start in starts:
                after = _step(board, start, die)
                key = (after, start if double else BAR)
                if after is not None and key not in reached:
                    reached[key] = (*steps, (start, max(start - die, 0)))
        if not reached:
            break
        frontier = reached
    found: dict[Position, tuple[Step, ...]] = {}
    for (board, _), steps in frontier.items():
        found.setdefault(board, steps)
    return found


def moves(pos: Position, roll: tuple[int, int]) -> list[tuple[Position, tuple[Step, ...]]]:
    """The distinct positions a roll can lead to, each with one way to play it; one entry
    (the position unchanged, no steps) when nothing can be played."""
    high, low = max(roll), min(roll)
    orders = [(high,) * 4] if high == low else [(high, low), (low, high)]
    found: dict[Position, tuple[tuple[Step, ...], int]] = {}  # -> (steps, first die)
    most = 0
    for order in orders:
        for final, steps in _plays(pos, order).items():
            if len(steps) > most:
                found, most = {}, len(steps)
            if len(steps) == most and final not in found:
                found[final] = (steps, order[0])
    if most == 1 and high != low and any(d == high for _, d in found.values()):
        found = {f: v for f, v in found.items() if v[1] == high}  # one die: the larger
    return [(final, steps) for final, (steps, _) in found.items()]


def notation(steps: tuple[Step, ...]) -> str:
    """`24/18 13/11`, `bar/22`, `6/off`; `none` when nothing could be played."""
    if not steps:
        return "none"
    return " ".join(f"{'bar' if a == BAR else a}/{'off' if b == 0 else b}" for a, b in steps)


def parse_steps(text: str) -> tuple[Step, ...]:
    """The steps a move written in notation names (checked against `moves` by callers)."""
    if text.strip() == "none":
        return ()
    steps = []
    for word in text.split():
        start, _, end = word.lower().partition("/")
        a = BAR if start == "bar" else int(start) if start.isdigit() else -1
        b = 0 if end == "off" else int(end) if end.isdigit() else -1
        if not (1 <= a <= BAR and 0 <= b < a):
            raise ValueError(f"{word!r} is not a move such as 13/11, bar/22 or 6/off")
        steps.append((a, b))
    return tuple(steps)


def check(pos: Position) -> Position:
    """The position, or ValueError when it cannot arise in a game."""
    if len(pos) != 28:
        raise ValueError("a position has 28 numbers")
    ours = sum(n for n in pos[1:26] if n > 0) + pos[OUR_OFF]
    theirs = -sum(n for n in pos[0:25] if n < 0) - pos[THEIR_OFF]
    if pos[BAR] < 0 or pos[THEIR_BAR] > 0 or pos[OUR_OFF] < 0 or pos[THEIR_OFF] > 0:
        raise ValueError("bars and borne-off counts have the wrong sign")
    if ours != CHECKERS or theirs != CHECKERS:
        raise ValueError(f"each side has 15 checkers (here {ours} and {theirs})")
    if pos[OUR_OFF] == CHECKERS and -pos[THEIR_OFF] == CHECKERS:
        raise ValueError("both sides have borne off every checker")
    return pos


# --- GNU Backgammon's position ID ---------------------------------------------------

def position_id(pos: Position) -> str:
    """The 14-character position ID of GNU Backgammon (manual, "A technical description
    of the Position ID"): for the player on roll then the opponent, for each point from
    their ace point round to the bar, a 1 per checker and a 0; 80 bits, least
    significant bit first in each of 10 bytes, in Base64 without its padding."""
    bits: list[int] = []
    for side in (pos, flip(pos)):
        for point in [*range(1, 25), BAR]:
            bits += [1] * max(side[point], 0) + [0]
    bits += [0] * (80 - len(bits))
    key = bytes(sum(bits[8 * i + j] << j for j in range(8)) for i in range(10))
    return base64.b64encode(key).decode("ascii")[:14]


def from_position_id(text: str) -> Position:
    """The position an ID names (the player on roll to move), or ValueError."""
    if len(text) != 14:
        raise ValueError("a position ID has 14 characters")
    try:
        key = base64.b64decode(text + "==", validate=True)
    except ValueError as e:
        raise ValueError(f"{text!r} is not Base64") from e
    ours, theirs = _counts([(key[i] >> j) & 1 for i in range(10) for j in range(8)])
    board = [0] * 28
    board[1:25] = ours[:24]
    for point in range(1, 25):
        if theirs[point - 1]:
            if board[25 - point]:
                raise ValueError(f"both sides on point {25 - point}")
            board[25 - point] = -theirs[point - 1]
    board[BAR], board[THEIR_BAR] = ours[24], -theirs[24]
    board[OUR_OFF], board[THEIR_OFF] = CHECKERS - sum(ours), -(CHECKERS - sum(theirs))
    if board[OUR_OFF] < 0 or board[THEIR_OFF] > 0:
        raise ValueError("more than 15 checkers on a side")
    return check(tuple(board))


def _counts(bits: list[int]) -> tuple[list[int], list[int]]:
    """The 25 checker counts (points 1-24, bar) of each side, from the key's bits."""
    sides: list[list[int]] = [[]]
    count = 0
    for at, bit in enumerate(bits):
        if len(sides) == 2 and len(sides[1]) == 25:
            if any(bits[at:]):
                raise ValueError("bits after the opponent's bar")
            break
        if bit:
            count += 1
            continue
        sides[-1].append(count)
        count = 0
        if len(sides[-1]) == 25 and len(sides) == 1:
            sides.append([])
    if len(sides) != 2 or len(sides[1]) != 25:
        raise ValueError("the ID ends before both sides are described")
    return sides[0], sides[1]


def render(pos: Position) -> str:
    """The board from our side (X, moving 24 -> 1) with the opponent as O."""
    def row(points: list[int], top: bool) -> list[str]:
        lines = []
        for level in range(5):
            cells = []
            for p in points:
                n = abs(pos[p])
                mark = "X" if pos[p] > 0 else "O"
                shown = level < n if level < 4 else n >= 5
                text = (str(n) if n > 5 else mark) if level == 4 and n >= 5 else mark
                cells.append(f" {text if shown else '.'} ")
            lines.append("".join(cells[:6]) + "|" + "".join(cells[6:]))
        return lines if top else lines[::-1]
    top = list(range(13, 25))
    bottom = list(range(12, 0, -1))
    head = "".join(f"{p:^3}" for p in top[:6]) + "|" + "".join(f"{p:^3}" for p in top[6:])
    foot = "".join(f"{p:^3}" for p in bottom[:6]) + "|" + "".join(f"{p:^3}" for p in bottom[6:])
    bar = f"bar: X {pos[BAR]}  O {-pos[THEIR_BAR]}    off: X {pos[OUR_OFF]}  O {-pos[THEIR_OFF]}"
    return "\n".join([head, *row(top, True), "-" * 37, *row(bottom, False), foot, bar])
