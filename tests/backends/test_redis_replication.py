"""What WAIT's bookkeeping makes of `INFO replication`: pure, no server (the servers are in
test_redis_sentinel.py)."""

from __future__ import annotations

import pytest

from beatd.backends.redis_replication import Replication, ReplicaWait

INFO = (
    "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n"
    "slave0:ip=127.0.0.1,port=6380,state=online,offset=1350,lag=0\r\n"
    "slave1:ip=127.0.0.1,port=6381,state=wait_bgsave,offset=0,lag=0\r\n"
    "master_failover_state:no-failover\r\n"
    "master_replid:750b58ee92a699601e152d7e02e6da5dc729d8b0\r\n"
    "master_replid2:0000000000000000000000000000000000000000\r\n"
    "master_repl_offset:1400\r\nsecond_repl_offset:-1\r\n"
)
REPLID = "750b58ee92a699601e152d7e02e6da5dc729d8b0"


def test_info_gives_the_replication_id_offset_and_the_online_replicas_acknowledgements() -> None:
    assert Replication.parse(INFO) == Replication(REPLID, 1400, (1350,))
    assert Replication.parse("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n") == (
        Replication("", 0, ())
    )


@pytest.mark.parametrize(
    ("now", "paused"),
    [
        (Replication(REPLID, 1500, (1300,)), True),
        (Replication(REPLID, 1500, (1400,)), False),
        (Replication("a-new-primary", 1500, ()), False),
    ],
    ids=["replica_behind", "replica_caught_up", "failover_ended"],
)
def test_after_a_commit_no_replica_acknowledged_publishing_waits_for_the_offset_or_a_failover(
    now: Replication, paused: bool
) -> None:
    wait = ReplicaWait(1, 500, "redis://r")
    written = Replication(REPLID, 1400, (1350,))
    doubt = wait.acknowledged("commit", 0, 1, lambda: written)
    assert doubt == (
        "redis://r: commit: applied on the primary but acknowledged by 0 of 1 replicas within "
        "500 ms (WAIT): a failover now could lose it"
    )
    assert (wait.gate("commit", lambda: now) is not None) == paused
    assert wait.unacknowledged == 1
    if not paused:
        assert wait.gate("commit", lambda: Replication(REPLID, 1500, ())) is None  # resumed


def test_auto_waits_for_one_replica_while_the_primary_has_any() -> None:
    wait = ReplicaWait(None, 500, "redis://r")
    assert wait.wanted(lambda: Replication(REPLID, 10, (10, 10))) == 1
    wait.forget()
    assert wait.wanted(lambda: Replication(REPLID, 10, ())) == 0
    assert ReplicaWait(2, 500, "redis://r").wanted(lambda: Replication(REPLID, 10, ())) == 2
