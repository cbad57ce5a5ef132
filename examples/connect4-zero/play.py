"""Play Connect Four against a network from the store, or let another program drive it.

    python play.py [--network NAME-or-PATH] [--store DIR] [--first engine|you]
    python play.py --protocol            text protocol on stdin/stdout (see PROTOCOL.md)

In the terminal game, left/right arrows move the cursor and Enter or Space drops a
stone; the number keys 1-7 drop one straight into that column; q quits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import termios
import tty
from collections.abc import Iterator
from typing import TextIO

from board import COLS, Position, from_moves, render
from engine import DEFAULT_SIMULATIONS, Engine, WeightsRefused, find_weights

NAME = "connect4-zero"


def play(argv: list[str] | None = None) -> int:
    """The `play` entry point: 0 when the game or session ended normally, 2 on bad input."""
    args = _parser().parse_args(argv)
    try:
        engine = Engine.load(find_weights(args.network, args.store), args.simulations)
    except (WeightsRefused, OSError) as e:
        sys.stderr.write(f"play: {e}\n")
        return 2
    except Exception as e:  # reweigh's own errors: no such item, no store
        sys.stderr.write(f"play: {args.network}: {e}\n")
        return 2
    if args.protocol:
        return protocol(engine, sys.stdin, sys.stdout)
    return terminal_game(engine, engine_first=args.first == "engine")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="play", description=__doc__.split("\n")[0])
    parser.add_argument("--network", default=NAME,
                        help="store item (name, path, digest) or a weights file")
    parser.add_argument("--store", help="the reweigh store (default: $REWEIGH_STORE)")
    parser.add_argument("--simulations", type=int, default=DEFAULT_SIMULATIONS)
    parser.add_argument("--protocol", action="store_true", help="speak the text protocol")
    parser.add_argument("--first", choices=("engine", "you"), default="you")
    return parser


# --- the text protocol ------------------------------------------------------------------

def protocol(engine: Engine, lines: TextIO, out: TextIO) -> int:
    """One command per line, one answer (or a few lines) per command; columns are 1-7."""
    position = Position()
    for line in lines:
        words = line.split()
        if not words:
            continue
        command, rest = words[0], words[1:]
        if command == "quit":
            break
        try:
            position, answer = _command(engine, position, command, rest)
        except ValueError as e:
            answer = f"error {e}"
        out.write(answer + "\n")
        out.flush()
    return 0


def _command(engine: Engine, position: Position, command: str,
             rest: list[str]) -> tuple[Position, str]:
    if command == "hello":
        return position, f"id name {NAME}\nid protocol 1\nready"
    if command == "isready":
        return position, "readyok"
    if command == "newgame":
        return Position(), "ok"
    if command == "position":
        return _position(rest), "ok"
    if command == "go":
        if position.result() is not None:
            raise ValueError("the game is over")
        simulations = _simulations(rest)
        move, value = engine.think(position, simulations)
        return position, f"info value {value:+.3f}\nbestmove {move + 1}"
    if command == "show":
        return position, render(position) + f"\nresult {_result_word(position)}"
    raise ValueError(f"unknown command {command!r} (hello, isready, newgame, position, go, "
                     "show, quit)")


def _position(words: list[str]) -> Position:
    if not words or words[0] != "startpos":
        raise ValueError("expected: position startpos [moves C C ...]")
    moves = words[2:] if len(words) > 1 and words[1] == "moves" else []
    if len(words) > 1 and words[1] != "moves":
        raise ValueError(f"expected 'moves' after startpos, not {words[1]!r}")
    if not all(m.isdigit() and 1 <= int(m) <= COLS for m in moves):
        raise ValueError(f"moves are columns 1-{COLS}")
    return from_moves([int(m) - 1 for m in moves])


def _simulations(words: list[str]) -> int | None:
    if not words:
        return None
    if len(words) == 2 and words[0] == "simulations" and words[1].isdigit() \
            and 1 <= int(words[1]) <= 100_000:
        return int(words[1])
    raise ValueError("expected: go [simulations N] with N from 1 to 100000")


def _result_word(position: Position) -> str:
    result = position.result()
    if result is None:
        return "ongoing"
    if result == 0.0:
        return "draw"
    return "first-player-wins" if position.ply % 2 == 1 else "second-player-wins"


# --- the terminal game ------------------------------------------------------------------

KEYS = {"\x1b[D": "left", "\x1b[C": "right", "\r": "drop", "\n": "drop", " ": "drop",
        "q": "quit", "\x03": "quit", "\x04": "quit"}


def terminal_game(engine: Engine, engine_first: bool = False) -> int:
    position, cursor = Position(), 3
    you_first = not engine_first
    with _raw(sys.stdin):
        while position.result() is None:
            engine_to_move = (position.ply % 2 == 0) != you_first
            _draw(position, cursor, you_first, "thinking..." if engine_to_move else
                  "your move: arrows and Enter, or 1-7; q quits")
            if engine_to_move:
                move, _ = engine.think(position)
                position = position.play(move)
                continue
            key = _read_key()
            if key.isdigit() and 1 <= int(key) <= COLS and position.can_play(int(key) - 1):
                position = position.play(int(key) - 1)
            elif KEYS.get(key) == "left":
                cursor = max(0, cursor - 1)
            elif KEYS.get(key) == "right":
                cursor = min(COLS - 1, cursor + 1)
            elif KEYS.get(key) == "drop" and position.can_play(cursor):
                position = position.play(cursor)
            elif KEYS.get(key) == "quit":
                _draw(position, cursor, you_first, "bye")
                return 0
        _draw(position, cursor, you_first, _verdict(position, you_first))
    return 0


def _verdict(position: Position, you_first: bool) -> str:
    if position.result() == 0.0:
        return "a draw."
    first_won = position.ply % 2 == 1
    return "you win!" if first_won == you_first else "the engine wins."


def _draw(position: Position, cursor: int, you_first: bool, message: str) -> None:
    pointer = " ".join("v" if c == cursor else " " for c in range(COLS))
    text = f"\x1b[H\x1b[2J{pointer}\r\n" + render(position).replace("\n", "\r\n")
    you = "X (you move first)" if you_first else "O"
    sys.stdout.write(f"{text}\r\n\r\nyou are {you}. {message}\r\n")
    sys.stdout.flush()


def _read_key() -> str:
    key = os.read(sys.stdin.fileno(), 1).decode(errors="replace")
    if key == "\x1b":  # an arrow: ESC [ C or ESC [ D
        key += os.read(sys.stdin.fileno(), 2).decode(errors="replace")
    return key


@contextlib.contextmanager
def _raw(stream: TextIO) -> Iterator[None]:
    if not stream.isatty():
        yield
        return
    saved = termios.tcgetattr(stream.fileno())
    tty.setraw(stream.fileno())
    try:
        yield
    finally:
        termios.tcsetattr(stream.fileno(), termios.TCSADRAIN, saved)


if __name__ == "__main__":
    sys.exit(play())
