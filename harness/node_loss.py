"""A Train run that outlives the loss of a node it had no warning of.

Ray Train 2.60 charges a worker death to its preemption budget (unlimited by default) only when
the node was drained for preemption first (`RayActorError.preempted`: KubeRay pods, `ray start
--block` on SIGTERM). A spot VM that simply vanishes, or a node whose raylet is killed, is charged
to `run.max_failures`, the budget meant for real errors, and with the default 0 the trial ends.
Here such a failure refits the same run (same name and storage, so Train resumes it from its last
committed checkpoint), up to `run.max_node_losses` times; any other error is raised as it is.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import ray
from ray.exceptions import RayActorError
from ray.train import Result, WorkerGroupError
from ray.train.torch import TorchTrainer

log = logging.getLogger(__name__)

# How long to wait for Ray to declare a suspect node dead: the GCS marks a node whose raylet
# vanished as dead only after its health checks fail (Ray 2.60 defaults: every 3 s, 5 misses),
# while Train may already have raised.
NODE_DEATH_WAIT_S = 30.0


def dead_nodes_behind(error: Exception, wait_s: float = NODE_DEATH_WAIT_S) -> list[str]:
    """Ids of the dead nodes on which Train workers died in `error` (empty: not a node loss).

    A worker whose code raised fails with a `RayTaskError`; one whose process or node went, with
    a `RayActorError` (died, or unavailable while its node is going). Any of the latter on a node
    that Ray lists as dead within `wait_s` makes it a node loss, as Ray's own preemption rule
    does: the surviving ranks often fail too (collective timeouts, connection resets), and a real
    bug fails again on the refit, without a lost node.
    """
    if not isinstance(error, WorkerGroupError):
        return []
    from ray.util.state import get_actor

    suspects = set()
    for failure in error.worker_failures.values():
        died = actor_error(failure)
        if died is not None and died.actor_id:
            actor = get_actor(died.actor_id)
            if actor is not None and actor.node_id:
                suspects.add(actor.node_id)
    deadline = time.monotonic() + wait_s
    while suspects:
        dead = suspects & {node["NodeID"] for node in ray.nodes() if not node["Alive"]}
        if dead or time.monotonic() >= deadline:
            return sorted(dead)
        time.sleep(1.0)
    return []


def actor_error(failure: BaseException | None) -> RayActorError | None:
    """The `RayActorError` behind a worker failure: Train 2.60 wraps the one its health check
    met (`WorkerHealthCheckFailedError.health_check_failure`); a raised one may be a cause."""
    for _ in range(4):
        if failure is None or isinstance(failure, RayActorError):
            return failure
        failure = getattr(failure, "health_check_failure", None) or failure.__cause__
    return None


def fit_through_node_loss(make_trainer: Callable[[], TorchTrainer], max_node_losses: int, name: str) -> Result:
    """`make_trainer().fit()`, refitted after each lost node, at most `max_node_losses` times."""
    losses = 0
    while True:
        try:
            return make_trainer().fit()
        except WorkerGroupError as exc:
            nodes = dead_nodes_behind(exc)
            if not nodes or losses == max_node_losses:
                raise
            losses += 1
            log.info(f"[train] {name}: node {', '.join(n[:12] for n in nodes)} was lost without warning; "
                     f"resuming from the last checkpoint ({losses} of run.max_node_losses {max_node_losses})")
