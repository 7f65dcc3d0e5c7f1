"""Issue 16 item 9: several threads training through one stack advance its clock once per backward pass
each (their calls are not mistaken for several heads of one step), and the stack still copies, pickles and
saves."""

import copy
import pickle
import threading

import torch
from torch import nn

from fastloss import IntervalLoss, ScheduledWeight, schedules


def make():
    return IntervalLoss(ScheduledWeight(nn.MSELoss(), schedules.constant(1.0)), every=2)


def run_threads(target, n_threads=2):
    errors = []

    def guarded(i):
        try:
            target(i)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_interleaved_threads_count_every_backward_pass():
    """Both threads call the loss at the same step, then both backpropagate: two steps, not one."""
    loss, steps = make(), 100
    barrier = threading.Barrier(2)

    def train(i):
        x = torch.rand(4, 3, requires_grad=True)
        for _ in range(steps):
            value = loss(x, torch.zeros(4, 3))
            barrier.wait()  # both outputs exist before either backward pass
            value.backward()
            barrier.wait()

    run_threads(train)
    assert loss.current_step() == 2 * steps


def test_free_running_threads_lose_no_step():
    loss, steps = make(), 1000

    def train(i):
        x = torch.rand(2, 2, requires_grad=True)
        for _ in range(steps):
            loss(x, torch.zeros(2, 2)).backward()

    run_threads(train, 4)
    assert loss.current_step() == 4 * steps


def test_several_heads_in_each_thread_share_that_threads_step():
    loss, steps = make(), 50
    barrier = threading.Barrier(2)

    def train(i):
        x = torch.rand(4, 3, requires_grad=True)
        for _ in range(steps):
            value = loss(x, torch.zeros(4, 3)) + loss(x * 2, torch.zeros(4, 3))  # two heads, one step
            barrier.wait()
            value.backward()
            barrier.wait()

    run_threads(train)
    assert loss.current_step() == 2 * steps


def test_a_written_step_is_still_respected():
    loss = make()
    x = torch.rand(2, requires_grad=True)
    value = loss(x, torch.zeros(2))
    loss.set_step(10)  # written between the call and its backward pass: the write wins, as before
    value.backward()
    assert loss.current_step() == 10
    loss(x, torch.zeros(2)).backward()
    assert loss.current_step() == 11


def test_stack_copies_pickles_and_saves_after_threaded_use():
    loss = make()

    def train(i):
        x = torch.rand(2, requires_grad=True)
        for _ in range(20):
            loss(x, torch.zeros(2)).backward()

    run_threads(train)
    assert loss.current_step() == 40
    for clone in (copy.deepcopy(loss), pickle.loads(pickle.dumps(loss))):
        assert clone.current_step() == 40
        x = torch.rand(2, requires_grad=True)
        clone(x, torch.zeros(2)).backward()
        assert clone.current_step() == 41 and loss.current_step() == 40
    fresh = make()
    fresh.load_state_dict(loss.state_dict())
    assert fresh.current_step() == 40
