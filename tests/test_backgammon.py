"""backgammon-td: the rules, pubeval, TD(lambda) self-play, the build and the engine's protocol.

The build test uses the smoke variant (`smoke.toml`, seconds to build); the default
recipe's win rates over 1000 games against random and pubeval are measured by its own
build and recorded in bench/README.md.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from .helpers import EXAMPLES, run_reweigh

BG = EXAMPLES / "backgammon-td"
sys.path.insert(0, str(BG))

import backgammon as bg  # noqa: E402
import games  # noqa: E402
import pubeval  # noqa: E402
from tdnet import ValueNet  # noqa: E402
from train import self_play  # noqa: E402


def position(ours: dict[int, int], theirs: dict[int, int], our_off: int = 0,
             their_off: int = 0) -> bg.Position:
    """A position from our side: our checkers by point (25 = bar), theirs by our numbering
    (0 = their bar); borne-off counts make each side 15."""
    board = [0] * 28
    for point, n in ours.items():
        board[point] += n
    for point, n in theirs.items():
        board[point] -= n
    board[bg.OUR_OFF], board[bg.THEIR_OFF] = our_off, -their_off
    return bg.check(tuple(board))


def plays(pos: bg.Position, roll: tuple[int, int]) -> set[str]:
    return {bg.notation(steps) for _, steps in bg.moves(pos, roll)}


def brute(pos: bg.Position, roll: tuple[int, int]) -> set[bg.Position]:
    """Every legal result by the plain rules: all orders, all checkers, no pruning."""
    high, low = max(roll), min(roll)
    found: dict[int, dict[bg.Position, set[int]]] = {}

    def walk(p: bg.Position, dice: tuple[int, ...], used: tuple[int, ...]) -> None:
        moved = False
        for start in ([bg.BAR] if p[bg.BAR] > 0 else range(24, 0, -1)) if dice else ():
            after = bg._step(p, start, dice[0])
            if after is not None:
                moved = True
                walk(after, dice[1:], (*used, dice[0]))
        if not moved:
            found.setdefault(len(used), {}).setdefault(p, set()).add(used[0] if used else 0)

    for order in ([(high,) * 4] if high == low else [(high, low), (low, high)]):
        walk(pos, order, ())
    best = found[max(found)]
    if max(found) == 1 and high != low and any(high in d for d in best.values()):
        best = {p: d for p, d in best.items() if high in d}
    return set(best)


def test_the_opening_rolls_have_their_known_plays() -> None:
    assert len(plays(bg.START, (3, 1))) == 16
    assert "8/5 6/5" in plays(bg.START, (3, 1)) and "24/13" not in plays(bg.START, (6, 5))
    assert "24/18 18/13" in plays(bg.START, (6, 5))
    assert all(len(bg.notation(s).split()) == 4 for _, s in bg.moves(bg.START, (6, 6)))


def test_moves_agree_with_a_search_of_every_order() -> None:
    rng = random.Random(11)
    for _ in range(12):
        pos = bg.START
        while True:
            roll = (rng.randint(1, 6), rng.randint(1, 6))
            found = {p for p, _ in bg.moves(pos, roll)}
            assert found == brute(pos, roll), (pos, roll)
            pos = rng.choice(sorted(found))
            if bg.winner_moved(pos):
                break
            pos = bg.flip(pos)


def test_the_bar_first_the_larger_die_and_bearing_off_from_the_top() -> None:
    their_home = {19: 2, 20: 2, 21: 2, 22: 2, 23: 2, 24: 2, 1: 3}  # every entry point held
    assert plays(position({25: 1, 6: 14}, their_home), (6, 1)) == {"none"}
    open_19 = {20: 2, 21: 2, 22: 2, 23: 2, 24: 2, 1: 5}  # only a 6 enters (at 19)
    assert {p.split()[0] for p in plays(position({25: 1, 13: 14}, open_19), (6, 3))} == \
        {"bar/19"}
    # either die alone, never both (1 is held): the larger must be played
    alone = position({10: 1}, {1: 2, 19: 13}, our_off=14)
    assert plays(alone, (6, 3)) == {"10/4"}
    # a larger die bears off from the highest point only
    home = position({5: 1, 2: 1}, {20: 15}, our_off=13)
    results = {p for p, _ in bg.moves(home, (6, 1))}
    assert results == {position({1: 1}, {20: 15}, our_off=14),
                       position({2: 1}, {20: 15}, our_off=14)}


def test_the_position_id_is_gnu_backgammons() -> None:
    assert bg.position_id(bg.START) == "4HPwATDgc/ABMA"  # the manual's starting position
    assert bg.from_position_id("4HPwATDgc/ABMA") == bg.START
    rng = random.Random(5)
    pos = bg.START
    for _ in range(200):
        pos = rng.choice(bg.moves(pos, (rng.randint(1, 6), rng.randint(1, 6))))[0]
        if bg.winner_moved(pos):
            pos = bg.START
            continue
        pos = bg.flip(pos)
        assert bg.from_position_id(bg.position_id(pos)) == pos
    for bad in ("4HPwATDgc/ABM", "4HPwATDgc/AB!A", "//////////////", "AAAAAAAAAAAAAA"):
        with pytest.raises(ValueError):
            bg.from_position_id(bad)


def test_pubevals_weights_are_the_published_ones() -> None:
    # sums over the 122 weights of each listing in GNU Backgammon's and OpenBSD's pubeval
    assert pubeval.CONTACT.shape == pubeval.RACE.shape == (122,)
    assert pubeval.CONTACT.sum() == pytest.approx(-6.72565, abs=1e-9)
    assert pubeval.RACE.sum() == pytest.approx(-31.29905, abs=1e-9)
    assert (pubeval.CONTACT[0], pubeval.CONTACT[121]) == (0.25696, -2.758)
    assert (pubeval.RACE[118], pubeval.RACE[121]) == (-3.40177, 3.4204)
    best = bg.moves(bg.START, (3, 1))[int(pubeval.scores(
        [p for p, _ in bg.moves(bg.START, (3, 1))], race=False).argmax())]
    assert bg.notation(best[1]) == "8/5 6/5"  # pubeval makes the 3-1 point


@pytest.mark.slow
def test_self_play_is_a_function_of_the_seed_and_learns_from_the_result() -> None:
    runs = []
    for _ in range(2):
        net = ValueNet(8, torch.Generator().manual_seed(3))
        before = [w.clone() for w in net.parameters()]
        plies = [self_play(net, games.Dice([7, 1, g]), 0.1, 0.7) for g in range(2)]
        runs.append((plies, [w.clone() for w in net.parameters()]))
    assert runs[0][0] == runs[1][0] and all(plies > 10 for plies in runs[0][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(before, runs[0][1], strict=True))


def test_a_match_plays_pairs_on_shared_dice() -> None:
    first = games.match(games.pubeval_player, lambda g: games.pubeval_player, 4, [1, 9])
    assert first.games == 4 and first.wins == 2  # the same player on the same dice
    rng = np.random.default_rng(0)
    again = games.match(games.random_player(rng), lambda g: games.pubeval_player, 6, [1, 9])
    assert again.games == 6 and again.wins <= 6


# --- the smoke build and the engine -----------------------------------------------------

@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    store = tmp_path_factory.mktemp("backgammon") / "store"
    result = run_reweigh("build", BG / "smoke.toml", "--json", store=store)
    assert result.returncode == 0, result.stderr
    return store, Path(json.loads(result.stdout)["path"])


@pytest.mark.slow
def test_the_build_reports_win_rates_against_random_and_pubeval(
        built: tuple[Path, Path]) -> None:
    _, item = built
    report = json.loads((item / "metrics.json").read_text())["evaluation"]
    assert report["games"] == 10
    for opponent in ("random", "pubeval"):
        assert report[f"win_rate_vs_{opponent}"] == report[f"wins_vs_{opponent}"] / 10
    transcript = json.loads((item / "transcript.json").read_text())
    assert len(transcript["checkpoints"]) == 4  # one per chunk of 10 games


def _engine(item: Path, commands: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BG / "play.py"), "--protocol", "--network",
                           str(item / "weights.safetensors")], input=commands,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
def test_the_engine_speaks_its_protocol(built: tuple[Path, Path]) -> None:
    _, item = built
    done = _engine(item, "hello\nisready\nposition startpos\ndice 3 1\nmoves\ngo\nshow\n"
                   "play 24/18\ndice 6 6\nplay 24/18 24/18 13/7 13/7\nshow\ndice 7 1\n"
                   "go\nposition gnubgid 4HPwATDgc/ABMA O\nshow\nbogus\nquit\nhello\n")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:4] == ["id name backgammon-td", "id protocol 1", "ready", "readyok"]
    moves = [line for line in lines if line.startswith("move ")]
    assert len(moves) == 16 and lines[lines.index(moves[-1]) + 1] == "end"
    best = next(line for line in lines if line.startswith("bestmove "))
    assert best == "bestmove " + moves[0].split(" win ")[0].removeprefix("move ")
    shows = [i for i, line in enumerate(lines) if line.startswith("position ")]
    assert lines[shows[0] + 1] == "on-roll O"  # after X's go, O is on roll
    assert "error no dice: send `dice A B` first" in lines  # play before dice
    assert "ok 24/18 24/18 13/7 13/7" in lines
    assert "error expected: dice A B with A and B from 1 to 6" in lines
    assert lines[shows[-1]] == "position 4HPwATDgc/ABMA" and lines[shows[-1] + 1] == "on-roll O"
    assert any(line.startswith("error unknown command 'bogus'") for line in lines)
    assert lines[-1] == "result ongoing" or lines[-1].startswith("error unknown")  # quit ends


@pytest.mark.slow
def test_the_engine_refuses_weights_of_another_network(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"fc.weight": torch.zeros(3, 4)}, str(other))
    done = subprocess.run([sys.executable, str(BG / "play.py"), "--protocol", "--network",
                           str(other)], input="hello\n", capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert len(done.stderr.splitlines()) == 1 and "hidden.weight" in done.stderr


@pytest.mark.slow
def test_the_terminal_game_shows_the_board_and_takes_moves(built: tuple[Path, Path]) -> None:
    _, item = built
    done = subprocess.run([sys.executable, str(BG / "play.py"), "--network",
                           str(item / "weights.safetensors"), "--seed", "4"],
                          input="99\n1\nq\n", capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "you (X) roll" in done.stdout and "not that:" in done.stdout  # 99 is no choice
    assert "O rolls" in done.stdout and done.stdout.rstrip().endswith("bye")
