"""The chunk schedule against a simulated synthesiser and player (no model: pure arithmetic)."""

from __future__ import annotations

from dataclasses import dataclass

from tts.schedule import ChunkSchedule

TOKEN_S = 0.04  # 25 speech tokens per second of audio


@dataclass
class Playback:
    sizes: list[int]
    stalls: list[float]  # silence before each chunk after the first, seconds


def simulate(schedule: ChunkSchedule, *, per_token_s: float, per_chunk_s: float, tokens: int,
             timed: bool = True, queued_s: float = 0.0) -> Playback:
    """Synthesise `tokens` tokens chunk by chunk: each chunk costs per_chunk_s + n * per_token_s.
    `timed=False` keeps the schedule blind to the timings (the fixed geometric schedule).
    `queued_s`: audio of an earlier sentence still playing when this one starts (then the first
    chunk's stall counts too)."""
    now = 0.0
    left = tokens
    buffered = queued_s
    stalls: list[float] = []
    while left > 0:
        n = min(schedule.next(), left)
        elapsed = per_chunk_s + n * per_token_s
        now += elapsed
        if schedule.sizes[:-1] or queued_s > 0:
            stalls.append(max(0.0, elapsed - buffered))
            buffered = max(0.0, buffered - elapsed)
        buffered += n * TOKEN_S
        if timed:
            schedule.emitted(n, n * TOKEN_S, now)
        left -= n
    return Playback(schedule.sizes, stalls)


def test_without_timings_it_is_geometric():
    schedule = ChunkSchedule(10, 25, 2.0, 100)
    assert [schedule.next() for _ in range(6)] == [10, 25, 50, 100, 100, 100]


def test_modelled_buffer_drains_with_wall_time_and_stalls_at_zero():
    schedule = ChunkSchedule(10, 25, 2.0, 100)
    schedule.next()
    schedule.emitted(10, 0.4, at=0.5)
    assert schedule.buffered_s == 0.4
    schedule.next()
    schedule.emitted(25, 1.0, at=0.7)  # 0.2 s of the first chunk played
    assert abs(schedule.buffered_s - 1.2) < 1e-9
    schedule.next()
    schedule.emitted(25, 1.0, at=5.0)  # the player ran dry long ago
    assert schedule.buffered_s == 1.0


def test_fast_synthesis_grows_chunks_with_the_buffer_without_gaps():
    # Four times faster than playback (a GPU): chunks follow the buffer up to the maximum.
    playback = simulate(ChunkSchedule(10, 25, 2.0, 100), per_token_s=0.01, per_chunk_s=0.05, tokens=600)
    assert playback.sizes[0] == 10
    assert max(playback.stalls) == 0.0
    assert playback.sizes[-2] == 100
    assert playback.sizes[:-1] == sorted(playback.sizes[:-1])


def test_near_real_time_stalls_less_than_the_geometric_schedule():
    # A little faster than playback, with a fixed cost per vocoder call: growing by a fixed factor
    # outruns the buffer again and again; sizing from the buffer stalls once, while it fills.
    adaptive = simulate(ChunkSchedule(10, 25, 2.0, 100), per_token_s=0.03, per_chunk_s=0.1, tokens=500).stalls
    geometric = simulate(ChunkSchedule(10, 25, 2.0, 100), per_token_s=0.03, per_chunk_s=0.1, tokens=500,
                         timed=False).stalls
    assert sum(1 for s in adaptive if s > 0) == 1
    assert sum(1 for s in geometric if s > 0) >= 2
    assert sum(adaptive) < sum(geometric)


def test_slow_synthesis_grows_geometrically_to_the_maximum():
    # Twice slower than playback (this 2-core CPU): gaps are unavoidable, so fewer, larger calls.
    playback = simulate(ChunkSchedule(10, 25, 2.0, 100), per_token_s=0.08, per_chunk_s=0.5, tokens=400)
    assert playback.sizes[:5] == [10, 25, 50, 100, 100]


def test_never_above_the_maximum():
    playback = simulate(ChunkSchedule(8, 16, 2.0, 40), per_token_s=0.001, per_chunk_s=0.0, tokens=400)
    assert max(playback.sizes) == 40


def test_audio_queued_before_the_request_lets_chunks_grow_at_once():
    # A second sentence while 3 s of the first still play: knowing that, the schedule goes straight
    # to large chunks (less repeated prompt and context per second of audio) and never stalls.
    told = simulate(ChunkSchedule(10, 25, 2.0, 100, queued_s=3.0), per_token_s=0.01, per_chunk_s=0.05,
                    tokens=300, queued_s=3.0)
    blind = simulate(ChunkSchedule(10, 25, 2.0, 100), per_token_s=0.01, per_chunk_s=0.05, tokens=300,
                     queued_s=3.0)
    assert max(told.stalls) == 0.0
    assert told.sizes[0] == 10  # first audio stays as quick as ever
    assert told.sizes[1] == 100
    assert blind.sizes[1] < 100
    assert len(told.sizes) < len(blind.sizes)


def test_slower_than_playback_chunks_never_shrink():
    # A little slower than playback with a fixed cost per call (pipelined Turbo on two cores): the
    # buffer a large chunk leaves would size the next one smaller, and smaller chunks cost more per
    # token; the schedule stays at the largest size instead, stalling less than small chunks do.
    grown = simulate(ChunkSchedule(6, 25, 2.0, 100), per_token_s=0.042, per_chunk_s=0.6, tokens=500)
    small = simulate(ChunkSchedule(6, 25, 1.0, 25), per_token_s=0.042, per_chunk_s=0.6, tokens=500)
    body = grown.sizes[:-1]  # the last one is what was left
    assert body == sorted(body)
    assert body[3:] == [100] * len(body[3:])
    assert sum(grown.stalls) < sum(small.stalls)
