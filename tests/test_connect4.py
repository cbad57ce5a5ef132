"""connect4-zero: the rules, the search, the opponents, the build and the engine.

The build tests use the smoke variant (`smoke.toml`, seconds to build); the default
recipe's strength is measured by its own build and recorded in bench/README.md.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import AVX2, Examples
from .helpers import EXAMPLES, run_reweigh

C4 = EXAMPLES / "connect4-zero"
SMOKE = C4 / "smoke.toml"
sys.path.insert(0, str(C4))

import board  # noqa: E402
import mcts  # noqa: E402
import net  # noqa: E402
import players  # noqa: E402
import selfplay  # noqa: E402
from net import Connect4Net, Evaluator  # noqa: E402


def test_four_in_a_row_in_every_direction() -> None:
    lines = {"vertical": [(r, 2) for r in range(4)],
             "horizontal": [(1, c) for c in range(3, 7)],
             "rising": [(k, k + 1) for k in range(4)],
             "falling": [(5 - k, k) for k in range(4)]}
    for name, cells in lines.items():
        stones = sum(board.cell(r, c) for r, c in cells)
        assert board.four_in_a_row(stones), name
        assert not board.four_in_a_row(stones ^ board.cell(*cells[1])), name
    wrapped = sum(board.cell(5, c) for c in range(2)) | sum(board.cell(0, c) for c in (1, 2))
    assert not board.four_in_a_row(wrapped)  # the sentinel row stops lines across columns


def test_a_game_is_won_drawn_or_refused() -> None:
    won = board.from_moves([3, 0, 3, 0, 3, 0, 3])
    assert won.result() == -1.0  # the player to move has lost
    with pytest.raises(ValueError, match="already over"):
        board.from_moves([3, 0, 3, 0, 3, 0, 3, 0])
    with pytest.raises(ValueError, match="not a playable column"):
        board.from_moves([0] * 7)
    drawn = board.from_moves([int(c) for c in "335212005014602435524223014410466566335611"])
    assert drawn.full() and drawn.result() == 0.0 and drawn.legal() == []


def test_alpha_beta_takes_a_win_and_blocks_one() -> None:
    rng = np.random.default_rng(0)
    player = players.AlphaBetaPlayer(2, rng)
    assert player(board.from_moves([0, 6, 1, 6, 2])) == 3  # O must block at once
    assert player(board.from_moves([3, 0, 3, 0, 3, 1])) == 3  # win at once


def test_search_finds_the_winning_move_even_with_an_untrained_network() -> None:
    evaluate = Evaluator(Connect4Net())
    position = board.from_moves([0, 6, 1, 6, 2, 5])  # X to move wins in column 4 (index 3)
    root = mcts.Node(position)
    mcts.expand_roots([root], evaluate)
    mcts.search([root], evaluate, 100, 1.5)
    assert mcts.best_move(root) == 3


@pytest.mark.slow  # three games of self-play, three times
def test_a_shard_is_a_function_of_its_task() -> None:
    model = Connect4Net(8, 1, 8)
    task = {"weights": {k: v.numpy() for k, v in model.state_dict().items()},
            "shape": {"channels": 8, "layers": 1, "hidden": 8}, "games": 3, "seed": [5, 1, 0],
            "search": {"simulations": 8, "c_puct": 1.5, "dirichlet_alpha": 1.0,
                       "noise_fraction": 0.25, "temperature_plies": 8}}
    first, again = selfplay.play_shard(task), selfplay.play_shard(task)
    other = selfplay.play_shard({**task, "seed": [5, 1, 1]})
    for key in first:
        assert np.array_equal(first[key], again[key])
    assert not np.array_equal(first["visits"], other["visits"])
    assert len(first["value"]) == first["plies"].sum() == len(first["planes"])
    assert set(np.unique(first["value"])) <= {-1, 0, 1}
    assert (first["visits"].sum(axis=1) >= 8).all()  # at least this move's simulations


def test_packed_positions_unpack_to_the_same_planes() -> None:
    rng = np.random.default_rng(3)
    positions = [board.from_moves([int(c) for c in rng.integers(0, 7, n)])
                 for n in (0, 1, 5, 9)]
    planes = net.encode(positions)
    assert np.array_equal(net.unpack(net.pack(planes)), planes)
    assert net.pack(planes).shape == (4, 11)


@pytest.fixture(scope="module")
def smoke_store(examples: Examples) -> Path:
    """The run's shared build of the smoke variant (one self-play process)."""
    return examples.built("connect4-zero-smoke").store


@pytest.fixture(scope="module")
def smoke_build(smoke_store: Path) -> dict:
    from reweigh.store import Store

    item = Store(smoke_store).resolve("connect4-zero-smoke")
    return {"path": str(item.path), "weights_digest": item.weights_digest}


@pytest.mark.slow
def test_self_play_builds_identically_on_one_and_on_two_processes(
        examples: Examples, smoke_build: dict, tmp_path: Path) -> None:
    """On an emulated AVX2 CPU too (test_platform's matrix): one rebuild for both."""
    store = examples.copy("connect4-zero-smoke", tmp_path).store
    result = run_reweigh("build", SMOKE, "--check", "--threads", "2", "--json", store=store,
                         env=AVX2)
    assert result.returncode == 0, result.stderr
    again = json.loads(result.stdout)
    assert again["weights_digest"] == smoke_build["weights_digest"]
    assert again["check"]["identical"] is True
    assert again["reused"] and again["threads"] == 2  # the item of one, rebuilt on two
    metrics = json.loads((Path(smoke_build["path"]) / "metrics.json").read_text())
    for opponent in ("random", "alphabeta"):
        rates = [metrics["evaluation"][f"{kind}_rate_vs_{opponent}"]
                 for kind in ("win", "draw", "loss")]
        assert abs(sum(rates) - 1.0) < 1e-9
    transcript = json.loads((Path(smoke_build["path"]) / "transcript.json").read_text())
    assert [c["step"] for c in transcript["checkpoints"]] == [1, 2, 3, 4]


def _engine(*args: str, store: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(C4 / "play.py"), *args, "--store", str(store)],
                          input=stdin, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
def test_the_engine_speaks_the_protocol(smoke_store: Path, smoke_build: dict) -> None:
    session = ("hello\nposition startpos moves 1 7 2 7 3\ngo simulations 64\n"
               "position startpos moves 9\ngo simulations 0\nfly\nshow\nquit\n")
    result = _engine("--network", "connect4-zero-smoke", "--protocol", store=smoke_store,
                     stdin=session)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == ["id name connect4-zero", "id protocol 1", "ready"]
    assert "bestmove 4" in lines  # it completes (or, for O, would block) the row at once
    errors = [line for line in lines if line.startswith("error ")]
    assert len(errors) == 3, lines  # a bad move, a bad simulation count, an unknown command
    assert lines[-1].startswith("result ")


@pytest.mark.slow
def test_the_engine_refuses_weights_that_do_not_fit(tmp_path: Path, smoke_store: Path,
                                                    smoke_build: dict,
                                                    examples: Examples) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(Path(smoke_build["path"]) / "weights.safetensors"))
    tensors["policy.weight"] = tensors["policy.weight"][:, :-1]
    save_file(tensors, tmp_path / "cut.safetensors")
    result = _engine("--network", str(tmp_path / "cut.safetensors"), "--protocol",
                     store=smoke_store)
    assert result.returncode == 2
    assert "policy.weight" in result.stderr and "Traceback" not in result.stderr
    logreg_store = examples.built("digits-logreg").store
    result = _engine("--network", "digits-logreg", "--protocol", store=logreg_store)
    assert result.returncode == 2 and "not a Connect Four network" in result.stderr


@pytest.mark.slow
def test_a_person_can_play_in_the_terminal(smoke_store: Path, smoke_build: dict) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: the game, on a pseudo-terminal
        os.execv(sys.executable, [sys.executable, str(C4 / "play.py"), "--network",
                                  "connect4-zero-smoke", "--store", str(smoke_store),
                                  "--simulations", "16"])
    screen = _read_until(fd, b"your move")
    os.write(fd, b"\x1b[C")  # cursor one right: column 5
    _read_until(fd, b"your move")
    os.write(fd, b"\r")  # drop there
    screen = _read_until(fd, b"your move")
    os.write(fd, b"q")
    _read_until(fd, b"bye")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    last_board = screen.rsplit(b"\x1b[2J", 1)[-1].decode()
    bottom_row = [line for line in last_board.splitlines() if line.strip()][-3]
    assert bottom_row.split()[4] == "X"  # our stone, in column 5
    assert bottom_row.count("O") + last_board.count("O") >= 1  # and the engine answered


def _read_until(fd: int, marker: bytes, timeout: float = 60) -> bytes:
    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen.rsplit(b"\x1b[2J", 1)[-1]:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no {marker!r} on the screen: {seen[-400:]!r}")
        seen += os.read(fd, 4096)
    return seen
