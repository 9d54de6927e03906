"""The gateway's outbox on its own: bounds and policy, backoff, restart, a refusing disk."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.outbox import Outbox, OutboxError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _outbox(
    path: Path | None, clock: Clock, drops: list[tuple[str, str]], **bounds: object
) -> Outbox:
    return Outbox(
        path,
        retry_after=2.0,
        retry_max=10.0,
        on_drop=lambda camera, reason: drops.append((camera, reason)),
        clock=clock,
        **bounds,  # type: ignore[arg-type]
    )


def _put(
    outbox: Outbox, seq: int, *, size: int = 100, sent: bool = True, camera: str = "cam-1"
) -> bool:
    return outbox.put((camera, seq, 10**9 + seq), "t", bytes(size), "raw", sent=sent)


def test_a_sent_feature_comes_back_with_backoff_until_acknowledged() -> None:
    clock, drops = Clock(), []
    outbox = _outbox(None, clock, drops)
    assert _put(outbox, 1)
    assert outbox.take_due(10) == []  # just sent: not due before retry_after
    waits = []
    for _ in range(5):
        due = outbox.next_due()
        assert due is not None
        waits.append(due - clock.now)
        clock.now = due
        (again,) = outbox.take_due(10)
        assert again.capture == ("cam-1", 1, 10**9 + 1)
    assert waits == [2.0, 4.0, 8.0, 10.0, 10.0]  # doubling, capped at retry_max
    assert outbox.acknowledge([("cam-1", 1, 10**9 + 1), ("cam-1", 1, 5)]) == 1  # one held here
    assert (outbox.items, outbox.bytes, outbox.next_due()) == (0, 0, None)
    assert drops == []


def test_a_copy_goes_again_only_once_the_cloud_has_acknowledged_something_sent_after_it() -> None:
    """Paced by the acks: what waits in a broker's queue (a cut link, a draining backlog) is
    late, not lost; a feature the cloud has moved past (it acknowledged one sent at least
    retry_after later) is lost, and goes again."""
    clock, drops = Clock(), []
    outbox = _outbox(None, clock, drops)  # retry_after 2, retry_max 10
    for seq in range(1, 6):  # sent at 1000, 1001, ..., 1004
        assert _put(outbox, seq)
        clock.now += 1
    clock.now = 1004.5
    # no ack yet, but the last was under retry_max ago: nothing is known lost
    assert outbox.paced() == 0.0 - 2.0
    # the cloud acknowledges the one sent at 1004, half a second later: those sent by 1002
    # were passed over, once their own acks have had retry_after to come (acks of one
    # backlog overtake each other)
    assert outbox.acknowledge([("cam-1", 5, 10**9 + 5)]) == 1
    assert outbox.paced() == 0.0 - 2.0
    clock.now = 1006.4
    assert outbox.paced() == 0.0 - 2.0
    clock.now = 1006.5
    assert outbox.paced() == 1002.0
    clock.now = 1008.0  # all past their backoff
    again = outbox.take_due(10, sent_before=outbox.paced())
    assert [item.seq for item in again] == [1, 2, 3]  # not 4, sent 1 s before the acked one
    # a copy that went is not sent again before something later is acknowledged
    clock.now = 1014.0  # every backoff passed, 9.5 s since the last ack
    assert outbox.take_due(10, sent_before=outbox.paced()) == []
    # no ack for retry_max: pacing stops (the uplink then sends one probe at a time)
    clock.now = 1015.0
    assert outbox.paced() is None
    outbox.link_restored()  # the link is back: acks get retry_max to start flowing
    assert outbox.paced() == 1002.0


def test_a_copy_another_consumer_still_holds_is_not_sent_again_until_it_too_moves_on() -> None:
    """Two cloud consumers (two cloud machines) share the features: one's acks run ahead of
    the other's backlog. A copy goes again only once every consumer acking lately has
    passed it; a consumer silent for retry_max no longer holds anything back."""
    clock, drops = Clock(), []
    outbox = _outbox(None, clock, drops)  # retry_after 2, retry_max 10
    for seq in range(1, 7):  # sent at 1000..1005; the slow consumer "b" got 1 and 2
        assert _put(outbox, seq)
        clock.now += 1
    assert outbox.acknowledge([("cam-1", 3, 10**9 + 3)], "b") == 1  # b: through 1002
    assert outbox.acknowledge([("cam-1", 6, 10**9 + 6)], "a") == 1  # a: through 1005
    clock.now = 1010.0  # both marks stood for retry_after; every backoff passed
    # a alone would let 1, 2, 4 go (sent by 1003); b has acked only through 1002: 1000 and
    # before are passed by both
    assert [item.seq for item in outbox.take_due(10, sent_before=outbox.paced())] == [1]
    assert outbox.acknowledge([("cam-1", 4, 10**9 + 4)], "b") == 1  # b catches up: 1003
    clock.now = 1012.5
    assert [item.seq for item in outbox.take_due(10, sent_before=outbox.paced())] == [2]
    # b falls silent for retry_max while a keeps acking: only a paces
    assert _put(outbox, 7)  # sent at 1012.5
    clock.now = 1017.0
    assert outbox.acknowledge([("cam-1", 7, 10**9 + 7)], "a") == 1  # a: through 1012.5
    clock.now = 1019.5  # a's mark stood 2.5 s; b last acked 7 s ago: still counted
    assert outbox.take_due(10, sent_before=outbox.paced()) == []
    clock.now = 1021.0  # b silent for 11 s > retry_max: a's word alone (it has passed 5,
    # and 1's copy of 1010)
    assert [item.seq for item in outbox.take_due(10, sent_before=outbox.paced())] == [5, 1]


def test_a_full_outbox_drops_by_policy_and_counts_it() -> None:
    clock, drops = Clock(), []
    oldest = _outbox(None, clock, drops, max_items=3)
    for seq in range(5):
        clock.now += 1
        assert _put(oldest, seq)
    assert oldest.items == 3 and drops == [("cam-1", "outbox_full")] * 2
    clock.now += 100
    assert sorted(p.seq for p in oldest.take_due(10)) == [2, 3, 4]  # the newest three stayed

    drops.clear()
    newest = _outbox(None, clock, drops, max_bytes=250, policy="newest")
    assert _put(newest, 0) and _put(newest, 1)
    assert not _put(newest, 2, camera="cam-9")  # 300 bytes would not fit: the new one goes
    assert not _put(newest, 3, size=251)  # larger than the whole outbox
    assert (newest.items, newest.bytes) == (2, 200)
    assert drops == [("cam-9", "outbox_full"), ("cam-1", "outbox_full")]


def test_what_was_held_is_due_at_once_after_a_restart(tmp_path: Path) -> None:
    clock, drops = Clock(), []
    path = tmp_path / "gw-1-w0.sqlite"
    first = _outbox(path, clock, drops)
    for seq in range(4):
        assert _put(first, seq, sent=True)
    assert _put(first, 4, sent=False)  # no send slot was free: due at once
    assert [p.seq for p in first.take_due(10)] == [4]
    first.acknowledge([("cam-1", 0, 10**9)])
    first.close()

    second = _outbox(path, clock, drops)  # same clock instant: nothing would be due yet...
    assert (second.items, second.bytes) == (4, 400)
    assert sorted(p.seq for p in second.take_due(10)) == [1, 2, 3, 4]  # ...but all are


def test_a_camera_that_restarted_does_not_overwrite_what_it_sent_before() -> None:
    clock, drops = Clock(), []
    outbox = _outbox(None, clock, drops)
    assert outbox.put(("cam-1", 0, 111), "t", b"before", "raw", sent=True)
    assert outbox.put(("cam-1", 0, 222), "t", b"after", "raw", sent=True)  # seq from 0 again
    assert outbox.items == 2


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="policy"):
        Outbox(None, policy="random")
    with pytest.raises(ValueError, match="retry_after"):
        Outbox(None, retry_after=5.0, retry_max=1.0)


def test_a_disk_that_refuses_writes_raises_outbox_error_and_keeps_the_counts(
    tmp_path: Path,
) -> None:
    """A real process whose file-size limit stands in for a full disk (EFBIG, like ENOSPC,
    reaches SQLite as 'database or disk is full')."""
    script = textwrap.dedent(
        f"""
        import resource, signal
        from pathlib import Path
        from gateway.outbox import Outbox, OutboxError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        outbox = Outbox(Path({str(tmp_path / "full.sqlite")!r}))
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))
        kept = 0
        try:
            for seq in range(10_000):
                outbox.put(("cam-1", seq, seq), "t", bytes(4096), "raw", sent=True)
                kept += 1
        except OutboxError as exc:
            print("refused", kept, outbox.items, exc)
        for name, call in (
            ("re-send", lambda: outbox.take_due(10_000)),  # marks them sent: a write
            ("retry", lambda: outbox.retry_now(("cam-1", 1, 1))),
        ):
            try:
                call()
            except OutboxError:  # a clear error, never sqlite's own
                pass
        try:
            outbox.acknowledge([("cam-1", 0, 0)])
        except OutboxError:
            print("ack refused", outbox.items)  # deleting needs room too (the WAL grows)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space freed
        outbox.acknowledge([("cam-1", 0, 0)])
        print("after ack", outbox.items)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    refused, *ack_refused, after = done.stdout.splitlines()
    _, kept, items, *message = refused.split()
    assert 0 < int(kept) < 10_000 and int(items) == int(kept)  # nothing half-counted
    assert "full" in " ".join(message)
    assert ack_refused in ([], [f"ack refused {kept}"])
    assert after == f"after ack {int(kept) - 1}"
    with pytest.raises(OutboxError, match="cannot open"):
        Outbox(tmp_path / "full.sqlite" / "not-a-dir" / "x.sqlite")
