"""List files (``predict --images LIST``, ``segment LIST``): cycles and encodings end in one line.

Issue 27 item 6: a list naming itself (or two naming each other) ended in ``RecursionError``;
a Latin-1 list in ``UnicodeDecodeError`` — both tracebacks.  Now one ``error:`` naming the file
and the line.  Nested lists that do not loop are expanded in place (a diamond is fine).
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from cityseg_deploy.errors import CitysegError
from cityseg_deploy.video.sources import MAX_LIST_DEPTH, image_paths, parse_sources, read_list


def _cycle(tmp_path, n: int, *, prefix_lines: int = 0):
    """n list files, each naming the next, the last naming the first; some lines before."""
    names = [tmp_path / f"l{i}.txt" for i in range(n)]
    for i, path in enumerate(names):
        path.write_text("# comment\n" * prefix_lines + f"{names[(i + 1) % n].name}\n")
    return names


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("reader", [image_paths, lambda p: parse_sources(p)])
def test_a_cycle_of_lists_is_one_error_naming_file_and_line(tmp_path, n, reader):
    names = _cycle(tmp_path, n, prefix_lines=n)  # the looping entry is on line n + 1
    with pytest.raises(CitysegError) as info:
        reader(str(names[0]))
    message = str(info.value)
    assert f"l{n - 1}.txt:{n + 1}: names" in message and "cannot include itself" in message


def test_a_diamond_of_lists_is_not_a_cycle(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "leaf.txt").write_text("a.png\n")
    (tmp_path / "mid1.txt").write_text("leaf.txt\n")
    (tmp_path / "mid2.txt").write_text("leaf.txt\n")
    (tmp_path / "top.txt").write_text("mid1.txt\nmid2.txt\n")
    assert read_list(tmp_path / "top.txt") == [str(tmp_path / "a.png")] * 2


def test_a_chain_deeper_than_the_limit_is_refused(tmp_path):
    depth = MAX_LIST_DEPTH + 3
    for i in range(depth):
        (tmp_path / f"c{i}.txt").write_text(f"c{i + 1}.txt\n" if i + 1 < depth else "x.png\n")
    with pytest.raises(CitysegError, match="nested more than"):
        read_list(tmp_path / "c0.txt")


@pytest.mark.parametrize("line", [1, 3])
@pytest.mark.parametrize("bad", [b"caf\xe9.png", b"\xff\xfe", b"ok.png\xa0"])
def test_a_list_in_another_encoding_names_the_line(tmp_path, line, bad):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"good.png\n" * (line - 1) + bad + b"\n")
    for reader in (image_paths, parse_sources):
        with pytest.raises(CitysegError, match=rf"latin\.txt:{line}: not UTF-8"):
            reader(str(path))


@pytest.mark.parametrize("command", ["predict", "segment"])
@pytest.mark.parametrize("case", ["self", "pair", "latin1"])
def test_cli_prints_one_error_line(tmp_path, command, case):
    if case == "self":
        (tmp_path / "l.txt").write_text("l.txt\n")
    elif case == "pair":
        (tmp_path / "l.txt").write_text("m.txt\n")
        (tmp_path / "m.txt").write_text("l.txt\n")
    else:
        (tmp_path / "l.txt").write_bytes("café.png\n".encode("latin-1"))
    args = (["predict", "none.pt", "--images", "l.txt", "--out", "o"] if command == "predict"
            else ["segment", "l.txt", "--model", "none.pt", "--labels-dir", "o"])
    proc = subprocess.run([sys.executable, "-m", "cityseg_deploy", *args], cwd=tmp_path,
                          capture_output=True, timeout=120, check=False)
    err = proc.stderr.decode()
    where = "m.txt:1: " if case == "pair" else "l.txt:1: "  # the line that closes the loop
    assert proc.returncode == 2 and err.count("\n") == 1 and err.startswith(f"error: {where}"), err
    assert not (tmp_path / "o").exists()


def test_lists_naming_lists_many_times_over_are_bounded(tmp_path):
    """The list-file billion laughs: 10 levels, each naming the next 10 times (10^10 entries)."""
    import time

    for i in range(10):
        (tmp_path / f"b{i}.txt").write_text(f"b{i + 1}.txt\n" * 10 if i < 9 else "x.png\n" * 10)
    start = time.perf_counter()
    with pytest.raises(CitysegError, match="expand to more than"):
        read_list(tmp_path / "b0.txt")
    assert time.perf_counter() - start < 30


def test_a_huge_list_file_is_refused_without_reading_it_all(tmp_path):
    from cityseg_deploy.video import sources

    path = tmp_path / "big.txt"
    with open(path, "wb") as fh:
        fh.truncate(sources.MAX_LIST_BYTES + 10)  # sparse: no disk used
    with pytest.raises(CitysegError, match="a list file over"):
        read_list(path)
