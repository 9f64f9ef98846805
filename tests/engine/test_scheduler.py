from __future__ import annotations

from rillet.engine.block_manager import BlockManager
from rillet.engine.scheduler import Scheduler
from rillet.engine.sequence import SequenceStatus

from .helpers import make_seq


def run_step(scheduler: Scheduler, next_token: int = 7) -> dict:
    """Plays the engine's part: mark scheduled tokens computed; sequences at their end sample."""
    out = scheduler.schedule()
    for seq, num_new in out.scheduled:
        seq.num_computed_tokens += num_new
        scheduler.block_manager.register_full_blocks(seq)
        if seq.num_computed_tokens == seq.num_tokens:
            seq.token_ids.append(next_token)
    return {seq.seq_id: n for seq, n in out.scheduled}


def test_long_prompt_is_prefilled_in_chunks_while_a_decode_keeps_running():
    bm = BlockManager(num_blocks=64, block_size=4)
    scheduler = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=16)
    decoding = make_seq([1, 2, 3])
    scheduler.add(decoding)
    run_step(scheduler)
    long = make_seq(list(range(10, 50)))  # 40 tokens
    scheduler.add(long)
    chunks = []
    while long.num_computed_tokens < 40:
        step = run_step(scheduler)
        assert step[decoding.seq_id] == 1  # the running stream gets its token every step
        chunks.append(step[long.seq_id])
    assert chunks == [15, 15, 10]


def test_budget_is_shared_and_admission_respects_max_num_seqs():
    bm = BlockManager(num_blocks=64, block_size=4)
    scheduler = Scheduler(bm, max_num_seqs=2, max_num_batched_tokens=100)
    seqs = [make_seq([k, 2, 3, 4, 5]) for k in (1, 2, 3)]
    for seq in seqs:
        scheduler.add(seq)
    step = run_step(scheduler)
    assert set(step) == {seqs[0].seq_id, seqs[1].seq_id}
    assert seqs[2].status is SequenceStatus.WAITING
    scheduler.finish(seqs[0])
    step = run_step(scheduler)
    assert step == {seqs[1].seq_id: 1, seqs[2].seq_id: 5}


def test_preemption_frees_the_newest_sequence_and_recomputes_it_later():
    bm = BlockManager(num_blocks=4, block_size=4, enable_prefix_caching=False)
    scheduler = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    old = make_seq([1, 2, 3, 4, 5, 6, 7], max_tokens=20)
    new = make_seq([11, 12, 13, 14, 15, 16, 17], max_tokens=20)
    scheduler.add(old)
    scheduler.add(new)
    run_step(scheduler)  # 2 blocks each: the pool is full
    assert bm.num_free_blocks == 0
    run_step(scheduler)  # each now holds 8 tokens in 2 blocks; next token needs a third block
    out = scheduler.schedule()
    assert out.preempted == [new]
    assert new.status is SequenceStatus.WAITING and new.block_table == []
    assert [s for s, _ in out.scheduled] == [old]
    for seq, n in out.scheduled:
        seq.num_computed_tokens += n
    scheduler.finish(old)
    # Once room is back, the preempted sequence recomputes its prompt and its output so far.
    out = scheduler.schedule()
    assert out.scheduled == [(new, new.num_tokens)]
    assert new.num_tokens == 9


def test_abort_frees_blocks_of_waiting_and_running_sequences():
    bm = BlockManager(num_blocks=16, block_size=4)
    scheduler = Scheduler(bm, max_num_seqs=1, max_num_batched_tokens=64)
    running = make_seq([1, 2, 3, 4, 5], request_id="a")
    waiting = make_seq([1, 2, 3, 4, 5], request_id="b")
    scheduler.add(running)
    scheduler.add(waiting)
    run_step(scheduler)
    assert scheduler.abort_request("a") == [running]
    assert scheduler.abort_request("b") == [waiting]
    assert not scheduler.has_work
    assert bm.num_free_blocks == 16


def test_second_request_with_same_prefix_computes_only_new_tokens():
    bm = BlockManager(num_blocks=32, block_size=4)
    scheduler = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=64)
    system = list(range(100, 120))  # 5 full blocks
    first = make_seq(system + [1, 2])
    scheduler.add(first)
    run_step(scheduler)
    second = make_seq(system + [3, 4, 5])
    scheduler.add(second)
    step = run_step(scheduler)
    assert step[second.seq_id] == 3


def test_a_waiting_sequences_prefix_hits_are_counted_once_however_long_it_waits():
    bm = BlockManager(num_blocks=32, block_size=4)
    scheduler = Scheduler(bm, max_num_seqs=1, max_num_batched_tokens=64)
    system = list(range(100, 120))  # 5 full blocks
    first = make_seq(system + [1, 2], max_tokens=3)
    scheduler.add(first)
    run_step(scheduler)
    second = make_seq(system + [3, 4, 5])
    scheduler.add(second)
    for _ in range(2):  # first runs on; second waits, looking its prefix up each step
        run_step(scheduler)
    assert second.status is SequenceStatus.WAITING
    scheduler.finish(first)
    run_step(scheduler)
    assert second.status is SequenceStatus.RUNNING
    # Each sequence counted once: the full blocks before its last token, 5 each; second found all 5.
    assert (bm.prefix_cache_queries, bm.prefix_cache_hits) == (5 + 5, 5)


def test_a_request_whose_choices_do_not_fit_yet_does_not_hold_up_a_small_one_behind_it():
    bm = BlockManager(num_blocks=64, block_size=4)
    scheduler = Scheduler(bm, max_num_seqs=4, max_num_batched_tokens=100)
    running = [make_seq([k, 2, 3]) for k in (1, 2)]
    for seq in running:
        scheduler.add(seq)
    run_step(scheduler)
    many = make_seq([5, 6, 7])
    many.pending_forks = 2  # n = 3: three slots at once, and two are free
    small = make_seq([8, 9])
    scheduler.add(many)
    scheduler.add(small)
    step = run_step(scheduler)
    assert small.seq_id in step and many.seq_id not in step
    assert many.status is SequenceStatus.WAITING and many.num_overtaken == 1


def test_a_waiting_request_is_overtaken_by_at_most_max_num_seqs_sequences_then_served_first():
    bm = BlockManager(num_blocks=64, block_size=4)
    scheduler = Scheduler(bm, max_num_seqs=2, max_num_batched_tokens=100)
    holder = make_seq([1, 2, 3])
    scheduler.add(holder)
    run_step(scheduler)
    pair = make_seq([4, 5, 6])
    pair.pending_forks = 1  # n = 2: needs both slots
    scheduler.add(pair)
    overtaking = []
    for k in range(3):
        small = make_seq([10 + k, 2])
        scheduler.add(small)
        step = run_step(scheduler)
        if small.seq_id in step:
            overtaking.append(small)
            scheduler.finish(small)
    assert len(overtaking) == 2 and pair.num_overtaken == 2  # the third small one waits behind the pair
    scheduler.finish(holder)
    step = run_step(scheduler)
    assert pair.seq_id in step and pair.status is SequenceStatus.RUNNING
