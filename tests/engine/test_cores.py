import sys

import pytest

from relprop.engine.cores import HZ, LOOK_EVERY, FreeCores, cpu_busy_seconds


class Machine:
    """Counters a test moves by hand: wall seconds, the busy seconds of all cores, this process's CPU seconds."""

    def __init__(self):
        self.wall, self.busy, self.own = 100.0, 5000.0, 3.0

    def run(self, seconds, ours, others):
        """seconds of wall time in which this process kept ``ours`` cores busy and other processes ``others``."""
        self.wall += seconds
        self.own += ours * seconds
        self.busy += (ours + others) * seconds

    def cores(self, cpus=2):
        return FreeCores(busy=lambda _: self.busy, cpus=range(cpus), clock=lambda: self.wall, own=lambda: self.own)


def test_crops_stay_on_one_thread_until_a_first_span_was_measured():
    machine = Machine()
    cores = machine.cores()
    assert cores.threads(2) == 1  # the first look starts a span
    machine.run(0.2, ours=1, others=0)
    assert cores.threads(2) == 2


def test_a_core_held_by_another_process_keeps_the_crops_on_one_thread():
    machine = Machine()
    cores = machine.cores()
    cores.look()
    machine.run(0.2, ours=1, others=1)
    assert cores.threads(2) == 1
    machine.run(0.2, ours=1, others=0.3)  # a little work elsewhere leaves the second core mostly free
    assert cores.threads(2) == 2


def test_this_process_s_own_threads_do_not_count_as_others():
    machine = Machine()
    cores = machine.cores()
    cores.look()
    machine.run(0.5, ours=2, others=0)  # both cores busy, all of it ours
    assert cores.look() == pytest.approx(2.0)
    assert cores.threads(2) == 2


def test_the_threads_are_the_free_cores_at_most_torch_s_setting():
    machine = Machine()
    cores = machine.cores(cpus=8)
    cores.look()
    machine.run(0.3, ours=1, others=2.6)
    assert cores.threads(16) == 5  # 8 - 2.6 = 5.4 free
    assert cores.threads(4) == 4
    assert cores.threads(1) == 1


def test_a_span_shorter_than_the_counters_resolve_keeps_the_last_answer():
    machine = Machine()
    cores = machine.cores()
    cores.look()
    machine.run(0.2, ours=1, others=1)
    assert cores.threads(2) == 1
    machine.run(LOOK_EVERY / 5, ours=1, others=0)
    assert cores.threads(2) == 1  # too short to tell: the answer before
    machine.run(LOOK_EVERY, ours=1, others=0)  # with the short span, long enough: mostly free
    assert cores.threads(2) == 2


def test_counters_that_cannot_be_read_keep_the_crops_on_one_thread():
    cores = FreeCores(busy=lambda _: None, cpus=range(4))
    assert [cores.threads(4) for _ in range(3)] == [1, 1, 1]


def test_busy_seconds_add_the_busy_fields_of_the_given_cores_only(tmp_path):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  900 0 300 9000 50 10 10 30 0 0\n"
                    "cpu0 100 0 100 4000 25 5 5 10 0 0\n"
                    "cpu1 800 0 200 5000 25 5 5 20 0 0\n"
                    "intr 12345\n")
    assert cpu_busy_seconds([0], stat) == pytest.approx((100 + 100 + 5 + 5 + 10) / HZ)
    assert cpu_busy_seconds([0, 1], stat) == pytest.approx((220 + 1030) / HZ)
    assert cpu_busy_seconds([0], tmp_path / "missing") is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's counters are read on Linux")
def test_busy_seconds_of_this_machine_grow_with_work():
    before = cpu_busy_seconds(FreeCores().cpus)
    total = 0
    for value in range(3_000_000):  # about 0.1 s of one core
        total += value
    after = cpu_busy_seconds(FreeCores().cpus)
    assert before is not None and after > before
