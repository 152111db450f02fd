"""The runner's own behaviour around TaskFlow's engines (no vCenter)."""

from __future__ import annotations

import contextlib

from taskflow import task
from taskflow.patterns import linear_flow

from vsan_flows.runtime import persistence, runner
from vsan_flows.runtime.plan import Plan

FACTORY = "tests.unit.test_runner.make_flow"


class Quiet(task.Task):
    def execute(self) -> int:
        return 1


class Reporting(task.Task):
    def execute(self) -> int:
        self.update_progress(0.5)  # what a transfer reports while it runs
        return 2


def make_flow():
    return linear_flow.Flow("f").add(Quiet("quiet"), Reporting("reporting"))


class CountingConnection:
    """Counts atom-detail saves (each one a committed transaction) on a real backend."""

    def __init__(self, backend) -> None:
        self.saves = 0
        real = backend.get_connection()
        original = real.update_atom_details

        def counted(ad):
            self.saves += 1
            return original(ad)

        real.update_atom_details = counted


def _saves(tmp_path, name, run) -> tuple[int, dict]:
    backend = persistence.backend_from_url(f"sqlite:///{tmp_path}/{name}.sqlite")
    persistence.upgrade_schema(backend)
    counter = CountingConnection(backend)  # the backend hands out one shared connection
    try:
        plan = Plan(operation="test", factory=FACTORY, factory_kwargs={},
                    store={"instance_name": "i"}, book_meta={})
        book, eng = runner.prepare(plan, backend)
        run(eng)
        with contextlib.closing(backend.get_connection()) as conn:
            fd = conn.get_flow_details(next(iter(book)).uuid, lazy=False)
        return counter.saves, {ad.name: ad.meta or {} for ad in fd}
    finally:
        backend.close()


def test_engine_progress_brackets_are_not_committed_but_reported_progress_is(tmp_path):
    ours, meta = _saves(tmp_path, "ours", runner._run)
    taskflows, _ = _saves(tmp_path, "plain", lambda eng: eng.run())
    assert "progress" not in meta["quiet"]          # 0 % and 100 %: implied by the states
    assert meta["reporting"]["progress"] == 0.5     # its own report: kept
    # Two tasks, two bracket reports each (0 % before, 100 % after): four commits fewer.
    assert taskflows - ours == 4, (taskflows, ours)


def test_resume_starts_one_flow_of_each_image_in_turn_oldest_first():
    from taskflow.persistence import models

    def flow(i: int, image: str | None):
        book = models.LogBook(f"b{i}")
        book.meta = {"operation": "spawn", "image": image} if image else None
        return book, models.FlowDetail(f"f{i}", uuid=f"u{i}")

    todo = [flow(0, "a"), flow(1, "a"), flow(2, "a"), flow(3, "b"), flow(4, None),
            flow(5, "b"), flow(6, "c"), flow(7, None)]
    order = runner.spread_by_image(todo)
    assert sorted(order) == list(range(len(todo)))  # every flow, once
    # Round one: the oldest flow of each image (and each flow without an image);
    # then the next of each image, and so on.
    assert order == [0, 3, 4, 6, 7, 1, 5, 2]


def test_resume_starts_the_flows_with_the_most_left_to_do_first_one_image_at_a_time():
    from taskflow import states
    from taskflow.persistence import models

    def flow(i: int, image: str, left: int, done: int = 2):
        book = models.LogBook(f"b{i}")
        book.meta = {"operation": "spawn", "image": image}
        fd = models.FlowDetail(f"f{i}", uuid=f"u{i}")
        for n in range(done + left):
            ad = models.TaskDetail(f"t{n}", uuid=f"u{i}-{n}")
            ad.state = states.SUCCESS if n < done else (
                states.RUNNING if n == done else states.PENDING)
            fd.add(ad)
        return book, fd

    todo = [flow(0, "a", 1), flow(1, "b", 6), flow(2, "c", 0), flow(3, "a", 6),
            flow(4, "d", 3), flow(5, "b", 3)]
    by_work = runner.most_work_first(todo)
    assert by_work == [1, 3, 4, 5, 0, 2]  # 6, 6, 3, 3, 1, 0 atoms left; ties by age
    # Spread over images in that order: a's long flow (3) starts in round one, its short one
    # (0) after every image had its turn.
    assert runner.spread_by_image(todo, by_work) == [1, 3, 4, 2, 5, 0]
