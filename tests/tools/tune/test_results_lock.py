"""The processes of one study write its results in turn, each reading the database inside its
turn, so that the last table written comes from the last state of the study."""

from __future__ import annotations

import os

import pytest

from kdlab.tools.tune import results

fcntl = pytest.importorskip("fcntl")


def lock_is_free(out) -> bool:
    fd = os.open(out / ".results.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_write_results_reads_and_writes_while_it_holds_the_lock(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(results, "_write_results",
                        lambda study, out, *rest: seen.append(lock_is_free(out)))
    results.write_results(None, tmp_path, [], None, "val_student_top1", "sqlite://", print)
    assert seen == [False]  # another process would have waited for its turn
    assert lock_is_free(tmp_path)  # and gets it once this one has written


def test_a_second_holder_waits(tmp_path):
    with results.results_lock(tmp_path):
        assert not lock_is_free(tmp_path)
    assert lock_is_free(tmp_path)
