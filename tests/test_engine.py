"""StreamingTTS on the random-weight checkpoint: streaming, the length guard, cancel, voices."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from tts.engine import SynthesisStats
from tts.errors import UnknownVoice
from tts.text import token_budget
from tts.vocoder import LOOKAHEAD, MEL_PER_TOKEN, SAMPLES_PER_MEL

pytestmark = pytest.mark.model
SAMPLES_PER_TOKEN = MEL_PER_TOKEN * SAMPLES_PER_MEL  # 960 = 40 ms at 24 kHz


@pytest.mark.parametrize("pipeline", [False, True])
def test_chunks_arrive_before_decoding_ends(engine, pipeline):
    import dataclasses
    import time

    produced: list[int] = []
    decode_done: list[float] = []
    real_generate = engine.decoder.generate

    def counting_generate(*args, **kwargs):
        for block in real_generate(*args, **kwargs):
            produced.append(len(block))
            if block.last:  # the engine stops asking after the last block: its end is marked
                decode_done.append(time.perf_counter())
            yield block

    original = engine.resolved
    engine.resolved = dataclasses.replace(original, pipeline=pipeline)
    engine.decoder.generate = counting_generate
    try:
        text = "The front door is open and the garage is closed, and the washing machine has finished its programme."
        budget = token_budget(text, engine.config.max_tokens_per_char, engine.config.max_speech_tokens)
        stream = engine.stream(text)
        first = next(stream)
        first_at = time.perf_counter()
        decoded_at_first_chunk = sum(produced)
        rest = list(stream)
    finally:
        engine.decoder.generate = real_generate
        engine.resolved = original
    assert len(first) > 0 and len(rest) >= 2
    assert first_at < decode_done[0], "first audio must not wait for the whole utterance"
    # The first block is exactly the first chunk plus lookahead, and nothing decodes beside the
    # first chunk's vocoding (pipelined decoding starts after it).
    assert produced[0] == engine.resolved.first_chunk_tokens + LOOKAHEAD
    assert decoded_at_first_chunk == produced[0]
    assert sum(produced) == budget  # the random model never stops by itself: the guard ends it


@pytest.mark.parametrize("max_tokens", [23, 41])  # 23: the 12-token chunk would be ready with the last block
def test_what_is_left_when_t3_ends_is_one_final_window(engine, max_tokens):
    """Once T3's last block is in, the rest (at most max_chunk_tokens) is vocoded in one window,
    not in scheduled chunks and then a final one (each window repeats the voice prompt)."""
    import dataclasses

    events: list[str] = []
    real_generate = engine.decoder.generate

    def marking_generate(*args, **kwargs):
        for block in real_generate(*args, **kwargs):
            if block.last:
                events.append("last block")
            yield block

    original = engine.resolved
    engine.resolved = dataclasses.replace(original, pipeline=False)  # blocks arrive in order with chunks
    engine.decoder.generate = marking_generate
    try:
        stats = SynthesisStats()
        for _ in engine.stream("A sentence long enough for its budget to be cut.", max_tokens=max_tokens,
                               stats=stats):
            events.append("chunk")
    finally:
        engine.decoder.generate = real_generate
        engine.resolved = original
    assert events.count("last block") == 1 and events[-2:] == ["last block", "chunk"], events
    left = stats.tokens + engine.family.flow.tail_silence - sum(stats.chunk_tokens)
    assert 0 < left <= engine.config.max_chunk_tokens + engine.family.flow.tail_silence


def test_length_guard_bounds_tokens_and_audio(engine):
    text = "Hi there."
    stats = SynthesisStats()
    audio = np.concatenate(list(engine.stream(text, stats=stats)))
    budget = token_budget(text, engine.config.max_tokens_per_char, engine.config.max_speech_tokens)
    assert stats.tokens == budget and stats.stopped_by_guard
    # Every decoded token is voiced, nothing more (plus the family's tail silence: Turbo's 3 tokens).
    assert len(audio) == (budget + engine.family.flow.tail_silence) * SAMPLES_PER_TOKEN
    assert np.isfinite(audio).all()  # unclipped: the daemon's output stage clips, after levelling


def test_max_tokens_override_and_hard_cap(engine):
    stats = SynthesisStats()
    list(
        engine.stream(
            "A much longer sentence that would otherwise take many tokens.", max_tokens=9, stats=stats
        )
    )
    assert stats.tokens == 9


def test_cancel_between_chunks_ends_the_stream(engine):
    cancel = threading.Event()
    stats = SynthesisStats()
    text = "This is a long announcement that should be cut short by a cancel."
    chunks = []
    for pcm in engine.stream(text, cancel=cancel, stats=stats):
        chunks.append(pcm)
        cancel.set()
    assert len(chunks) == 1
    budget = token_budget(text, engine.config.max_tokens_per_char, engine.config.max_speech_tokens)
    assert stats.audio_samples < budget * SAMPLES_PER_TOKEN / 2


def test_same_seed_same_audio(engine):
    a = np.concatenate(list(engine.stream("Good morning.", seed=3)))
    b = np.concatenate(list(engine.stream("Good morning.", seed=3)))
    c = np.concatenate(list(engine.stream("Good morning.", seed=4)))
    assert np.array_equal(a, b)
    assert len(a) == len(c) and not np.array_equal(a, c)


def test_unknown_voice_is_refused_before_any_work(engine):
    with pytest.raises(UnknownVoice) as info:
        next(engine.stream("Hello.", voice="nobody"))
    assert "default" in str(info.value) and info.value.known == engine.voices


def test_pipelined_and_sequential_decoding_give_the_same_audio(engine):
    import dataclasses

    original = engine.resolved
    try:
        engine.resolved = dataclasses.replace(original, pipeline=True)
        piped = np.concatenate(list(engine.stream("Lights off now.", seed=11)))
        engine.resolved = dataclasses.replace(original, pipeline=False)
        inline = np.concatenate(list(engine.stream("Lights off now.", seed=11)))
    finally:
        engine.resolved = original
    assert np.array_equal(piped, inline)


def test_closing_a_pipelined_stream_early_frees_the_decoder(engine):
    import dataclasses

    original = engine.resolved
    try:
        engine.resolved = dataclasses.replace(original, pipeline=True)
        for label in ("after the first chunk", "after the second chunk"):
            stream = engine.stream("A long announcement that nobody waits to hear the end of.", seed=1)
            next(stream)
            if label.endswith("second chunk"):
                next(stream)
            stream.close()
            assert not engine.decoder._lock.locked(), label
            assert len(np.concatenate(list(engine.stream("Next.", seed=2)))) > 0, label
    finally:
        engine.resolved = original


def test_a_decoder_failure_surfaces_as_synthesis_error_and_the_engine_recovers(engine):
    from tts.errors import SynthesisError

    real_generate = engine.decoder.generate

    def failing_generate(*args, **kwargs):
        yield from ()
        raise RuntimeError("injected decoder fault")

    engine.decoder.generate = failing_generate
    try:
        with pytest.raises(SynthesisError, match="injected decoder fault"):
            list(engine.stream("This will fail."))
    finally:
        engine.decoder.generate = real_generate
    assert len(np.concatenate(list(engine.stream("And this works.")))) > 0


def test_pipelined_t3_decodes_on_its_share_of_the_cores_without_changing_the_tokens(engine):
    # On a CPU the first block decodes on every core, the rest on T3's own core while the vocoder
    # has the other (never both: a second OpenMP team throttles libgomp, tts.engine). The thread
    # count changes between blocks; the tokens must not. (The audio may differ: the chunk schedule
    # follows measured timings.)
    import dataclasses

    original, threads, generate = engine.resolved, torch.get_num_threads(), engine.decoder.generate
    decoded: list[int] = []
    counts: list[int] = []  # the decoding thread's thread count at each block

    def recording(*args, **kwargs):
        for block in generate(*args, **kwargs):
            decoded.extend(block)
            counts.append(torch.get_num_threads())
            yield block

    text = "The washing machine finished its cycle an hour ago."
    runs = {}
    try:
        torch.set_num_threads(2)
        engine.decoder.generate = recording
        for pipeline in (True, False):
            engine.resolved = dataclasses.replace(original, pipeline=pipeline)
            decoded.clear()
            counts.clear()
            assert len(np.concatenate(list(engine.stream(text, seed=5, max_tokens=48)))) > 0
            assert torch.get_num_threads() == 2  # the request's split is undone
            runs[pipeline] = (list(decoded), list(counts))
    finally:
        engine.resolved = original
        engine.decoder.generate = generate
        torch.set_num_threads(threads)
    assert runs[True][1][0] == 2 and set(runs[True][1][1:]) == {1}
    assert set(runs[False][1]) == {2}
    assert len(runs[True][0]) == 48
    assert runs[True][0] == runs[False][0]


def test_the_next_text_decoded_ahead_sounds_as_it_would_on_its_own(engine):
    # Told the request's next text (`then`), T3 goes on with it once this text's tokens are done,
    # on its share of the cores while the vocoder finishes; the next call takes that over.
    import dataclasses

    original, threads = engine.resolved, torch.get_num_threads()
    first, second = "Good morning.", "Lights off now."
    try:
        torch.set_num_threads(2)
        engine.resolved = dataclasses.replace(original, pipeline=True)
        alone = np.concatenate(list(engine.stream(second, seed=9)))
        assert len(np.concatenate(list(engine.stream(first, seed=9, then=second)))) > 0
        ahead = engine._ahead
        assert ahead is not None and ahead.call.spec.text == engine.clean(second, "en")
        assert torch.get_num_threads() == 1  # the vocoder's share while T3 decodes ahead
        stats = SynthesisStats()
        taken_over = np.concatenate(list(engine.stream(second, seed=9, stats=stats)))
        assert engine._ahead is None and not engine.decoder._lock.locked()
        assert torch.get_num_threads() == 2
        assert np.array_equal(taken_over, alone)
        # Anything else discards it: the decoder is free and every core is the caller's again.
        list(engine.stream(first, seed=9, then=second))
        other = SynthesisStats()
        assert len(np.concatenate(list(engine.stream("Something else.", seed=9, stats=other)))) > 0
        assert engine._ahead is None and not engine.decoder._lock.locked()
        assert torch.get_num_threads() == 2
        # A cancelled request stops its decoding ahead too.
        cancel = threading.Event()
        for _ in engine.stream(first, seed=9, then=second, cancel=cancel):
            pass
        cancel.set()
        assert engine._ahead is not None
        engine._ahead.thread.join(timeout=30)
        assert not engine._ahead.thread.is_alive()
    finally:
        engine.resolved = original
        torch.set_num_threads(threads)
    assert len(np.concatenate(list(engine.stream(second, seed=9)))) > 0  # discards the stopped one
    assert engine._ahead is None and not engine.decoder._lock.locked()


def test_the_vocoder_gets_every_core_back_once_t3_has_ended():
    # `_Cores.reclaim` runs between a chunk's flow and its HiFT: nothing while T3's thread lives
    # (two OpenMP teams on two cores throttle libgomp), every core once it has ended.
    import threading

    from tts.engine import _Cores

    threads = torch.get_num_threads()
    release = threading.Event()
    try:
        torch.set_num_threads(2)
        cores = _Cores(2)
        cores.reclaim()  # no T3 thread (inline decoding): nothing to do
        torch.set_num_threads(1)  # the vocoder's share while T3 decodes
        cores.worker = threading.Thread(target=release.wait)
        cores.worker.start()
        cores.reclaim()
        assert torch.get_num_threads() == 1
        release.set()
        cores.worker.join()
        cores.reclaim()
        assert torch.get_num_threads() == 2
    finally:
        release.set()
        torch.set_num_threads(threads)
