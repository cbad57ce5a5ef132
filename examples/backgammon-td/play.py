"""Play backgammon against a network from the store, or let another program drive it.

    python play.py [--network NAME-or-PATH] [--store DIR] [--seed N]   a game in the terminal
    python play.py --protocol [--network NAME-or-PATH]                 text protocol (PROTOCOL.md)

In the terminal game you are X and move first from 24 down to 1; each turn shows the
board, the dice and the legal moves, numbered: type a number, or the move itself in the
usual notation (`13/11 6/5`, `bar/22`, `6/off`); q quits. The dice are drawn from the
system's randomness, or from `--seed` for a game that can be played again.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from backgammon import (
    START,
    Position,
    check,
    flip,
    from_position_id,
    moves,
    notation,
    parse_steps,
    position_id,
    render,
    winner_moved,
)
from safetensors.torch import load_file
from tdnet import ValueNet, features

NAME = "backgammon-td"


class WeightsRefused(ValueError):
    pass


def find_weights(network: str, store: str | None = None) -> Path:
    """A weights file given directly, or the weights of a store item (name, path, digest)."""
    path = Path(network)
    if path.is_file():
        return path
    if (path / "weights.safetensors").is_file():
        return path / "weights.safetensors"
    from reweigh.store import Store  # only needed to look a name up in the store

    return Store(Path(store) if store else None).resolve(network).weights


def load(weights: Path) -> ValueNet:
    try:
        tensors = load_file(str(weights))
    except Exception as e:  # safetensors reports a bad header in its own error types
        raise WeightsRefused(f"{weights}: not a readable safetensors file ({e})") from e
    try:
        return ValueNet.from_tensors(tensors)
    except ValueError as e:
        raise WeightsRefused(f"{weights}: {e}") from e


@dataclass
class Game:
    """A game in progress: the position from the side on roll, who that is, the dice."""

    net: ValueNet
    pos: Position = START
    turn: str = "X"
    dice: tuple[int, int] | None = None
    over: str | None = None  # "X" or "O" once someone has borne off everything
    ranked: list[tuple[float, Position, str]] = field(default_factory=list)

    def set_dice(self, a: int, b: int) -> None:
        if self.over:
            raise ValueError("the game is over")
        self.dice = (a, b)
        after = moves(self.pos, self.dice)
        with torch.no_grad():
            values = self.net.value(features([p for p, _ in after])).tolist()
        order = sorted(range(len(after)), key=lambda i: (-values[i], i))
        self.ranked = [(values[i], after[i][0], notation(after[i][1])) for i in order]

    def play(self, text: str) -> str:
        """Play a move given in notation (or `none`); the move as it was understood."""
        if self.dice is None:
            raise ValueError("no dice: send `dice A B` first")
        wanted = parse_steps(text)
        for _, after, written in self.ranked:
            if (written == "none" and not wanted) or _same(written, wanted):
                self._advance(after)
                return written
        legal = ", ".join(w for _, _, w in self.ranked[:6])
        raise ValueError(f"{text!r} is not a legal move for {self.dice} (legal: {legal}...)")

    def best(self) -> tuple[float, str]:
        if self.dice is None:
            raise ValueError("no dice: send `dice A B` first")
        value, after, written = self.ranked[0]
        self._advance(after)
        return value, written

    def _advance(self, after: Position) -> None:
        self.dice, self.ranked = None, []
        if winner_moved(after):
            self.over, self.pos = self.turn, after
            return
        self.pos, self.turn = flip(after), "O" if self.turn == "X" else "X"

    def board(self) -> str:
        """The board from X's side, whoever is on roll."""
        return render(self.pos if self.turn == "X" else flip(self.pos))


def _same(written: str, wanted: tuple[tuple[int, int], ...]) -> bool:
    return sorted(parse_steps(written)) == sorted(wanted)


# --- the text protocol ------------------------------------------------------------------

def protocol(net: ValueNet, lines: TextIO, out: TextIO) -> int:
    """One command per line; every command gets an answer, a bad one `error REASON`."""
    game = Game(net)
    for line in lines:
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            break
        try:
            game, answer = _command(net, game, words[0], words[1:])
        except ValueError as e:
            answer = f"error {e}"
        out.write(answer + "\n")
        out.flush()
    return 0


def _command(net: ValueNet, game: Game, command: str, rest: list[str]) -> tuple[Game, str]:
    if command == "hello":
        return game, f"id name {NAME}\nid protocol 1\nready"
    if command == "isready":
        return game, "readyok"
    if command == "newgame":
        return Game(net), "ok"
    if command == "position":
        return _position(net, rest), "ok"
    if command == "dice":
        if len(rest) != 2 or not all(len(w) == 1 and w in "123456" for w in rest):
            raise ValueError("expected: dice A B with A and B from 1 to 6")
        game.set_dice(int(rest[0]), int(rest[1]))
        return game, "ok"
    if command in PLAYS:
        _need_dice(game)
        return game, PLAYS[command](game, rest)
    if command == "show":
        return game, _show(game)
    raise ValueError(f"unknown command {command!r} (hello, isready, newgame, position, dice, "
                     "moves, go, play, show, quit)")


def _go(game: Game, rest: list[str]) -> str:
    value, written = game.best()
    return f"info win {value:.3f}\nbestmove {written}"


PLAYS = {
    "moves": lambda game, rest: "\n".join(
        [*(f"move {w} win {v:.3f}" for v, _, w in game.ranked), "end"]),
    "go": _go,
    "play": lambda game, rest: f"ok {game.play(' '.join(rest) or 'none')}",
}


def _show(game: Game) -> str:
    result = f"{game.over.lower()}-wins" if game.over else "ongoing"
    dice = " ".join(map(str, game.dice)) if game.dice else "none"
    return (f"{game.board()}\nposition {position_id(game.pos)}\non-roll {game.turn}\n"
            f"dice {dice}\nresult {result}")


def _need_dice(game: Game) -> None:
    if game.over:
        raise ValueError("the game is over")
    if game.dice is None:
        raise ValueError("no dice: send `dice A B` first")


def _position(net: ValueNet, words: list[str]) -> Game:
    if words == ["startpos"]:
        return Game(net)
    if len(words) == 3 and words[0] == "gnubgid" and words[2] in ("X", "O"):
        return Game(net, check(from_position_id(words[1])), words[2])
    if len(words) == 2 and words[0] == "gnubgid":
        return Game(net, check(from_position_id(words[1])))
    raise ValueError("expected: position startpos, or position gnubgid ID [X|O]")


# --- the terminal game ------------------------------------------------------------------

def terminal_game(net: ValueNet, seed: int | None, read: Iterator[str] | None = None) -> int:
    rng = np.random.default_rng(seed)
    game = Game(net)
    answers = read or iter(lambda: input("> "), None)
    while not game.over:
        a, b = (int(d) for d in rng.integers(1, 7, size=2))
        game.set_dice(a, b)
        if game.turn == "O":
            value, written = game.best()
            print(f"O rolls {a}-{b} and plays {written} (it gives itself {value:.0%})\n")
            continue
        print(game.board())
        print(f"\nyou (X) roll {a}-{b}")
        for i, (_, _, written) in enumerate(game.ranked[:20], start=1):
            print(f"  {i:2}. {written}")
        while game.turn == "X" and game.dice is not None:
            text = next(answers, "q").strip()
            if text == "q":
                print("bye")
                return 0
            try:
                choice = game.ranked[int(text) - 1][2] if text.isdigit() else text
                game.play(choice)
            except (ValueError, IndexError) as e:
                print(f"not that: {e}")
    print("you win!" if game.over == "X" else "O wins.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="play", description=__doc__.split("\n")[0])
    parser.add_argument("--network", default=NAME,
                        help="store item (name, path, digest) or a weights file")
    parser.add_argument("--store", help="the reweigh store (default: $REWEIGH_STORE)")
    parser.add_argument("--protocol", action="store_true", help="speak the text protocol")
    parser.add_argument("--seed", type=int, default=None, help="dice of the terminal game")
    args = parser.parse_args(argv)
    try:
        net = load(find_weights(args.network, args.store))
    except (WeightsRefused, OSError) as e:
        sys.stderr.write(f"play: {e}\n")
        return 2
    except Exception as e:  # reweigh's own errors: no such item, no store
        sys.stderr.write(f"play: {args.network}: {e}\n")
        return 2
    if args.protocol:
        return protocol(net, sys.stdin, sys.stdout)
    return terminal_game(net, args.seed)


if __name__ == "__main__":
    sys.exit(main())
