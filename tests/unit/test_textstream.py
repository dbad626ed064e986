"""TextStream: token bytes in, streamable text out (whole characters, never a piece of a stop sequence)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from offload.runner.textstream import TextStream

EMOJI = "😀".encode()  # 4 bytes
CJK = "漢字".encode()  # 2 x 3 bytes


def run(feeds: Sequence[bytes], stops: tuple[str, ...] = ()) -> tuple[list[str], str, bool]:
    """Feed everything; return what each feed emitted, what finish() released, and whether it stopped."""
    stream = TextStream(stops)
    emitted = [stream.feed(data) for data in feeds]
    return emitted, stream.finish(), stream.stopped


@pytest.mark.parametrize(
    ("feeds", "per_feed", "rest"),
    [
        pytest.param([b"hello", b" world"], ["hello", " world"], "", id="ascii"),
        pytest.param([bytes([b]) for b in EMOJI], ["", "", "", "😀"], "", id="emoji-in-4-single-bytes"),
        pytest.param([CJK[:1], CJK[1:4], CJK[4:]], ["", "漢", "字"], "", id="cjk-split-mid-character"),
        pytest.param([b"a" + EMOJI[:2], EMOJI[2:] + b"b"], ["a", "😀b"], "", id="text-around-a-split"),
        pytest.param([b"\xff"], ["\ufffd"], "", id="invalid-byte"),
        pytest.param([b"a\x80b"], ["a\ufffdb"], "", id="stray-continuation-byte"),
        pytest.param([b"ok", CJK[:2]], ["ok", ""], "\ufffd", id="truncated-character-at-finish"),
        pytest.param([], [], "", id="nothing"),
    ],
)
def test_utf8_without_stops(feeds: list[bytes], per_feed: list[str], rest: str) -> None:
    emitted, finished, stopped = run(feeds)
    assert emitted == per_feed
    assert finished == rest
    assert not stopped


@pytest.mark.parametrize(
    ("feeds", "stops", "text", "rest", "stopped"),
    [
        pytest.param([b"Hello STOP world"], ("STOP",), "Hello ", "", True, id="stop-in-one-feed"),
        pytest.param([b"Hello ST", b"OP world"], ("STOP",), "Hello ", "", True, id="stop-spanning-two-feeds"),
        pytest.param([b"a", b"S", b"T", b"O", b"P", b"b"], ("STOP",), "a", "", True, id="stop-one-byte-per-feed"),
        pytest.param([b"STOP"], ("STOP",), "", "", True, id="stop-at-start"),
        pytest.param([b"x</end>y</end>"], ("</end>",), "x", "", True, id="first-occurrence"),
        pytest.param([b"one two three"], ("three", "two"), "one ", "", True, id="earliest-of-several-wins"),
        pytest.param([b"abcd"], ("bcd", "c"), "a", "", True, id="earlier-start-beats-shorter"),
        pytest.param([b"ab", b"cd"], ("bcd", "cx"), "a", "", True, id="earliest-across-feeds"),
        pytest.param([b"Hello ST"], ("STOP",), "Hello ", "ST", False, id="partial-released-by-finish"),
        pytest.param([b"Hello ST", b"AR"], ("STOP",), "Hello STAR", "", False, id="partial-released-on-mismatch"),
        pytest.param([b"aaa", b"b"], ("aab",), "a", "", True, id="overlapping-prefixes"),
        pytest.param([b"x", "漢".encode()[:2], "漢".encode()[2:]], ("漢字",), "x", "漢", False, id="cjk-stop-prefix"),
        pytest.param([b"go", EMOJI[:2], EMOJI[2:], b"!"], ("😀!",), "go", "", True, id="emoji-stop-split-bytes"),
        pytest.param([b"no stop here"], ("STOP",), "no stop here", "", False, id="case-sensitive"),
        pytest.param([b"abc"], ("",), "abc", "", False, id="empty-stop-ignored"),
        pytest.param([b"abc", b"de"], ("", "d"), "abc", "", True, id="empty-stop-ignored-beside-real"),
    ],
)
def test_stops(feeds: list[bytes], stops: tuple[str, ...], text: str, rest: str, stopped: bool) -> None:
    emitted, finished, did_stop = run(feeds, stops)
    assert "".join(emitted) == text
    assert finished == rest
    assert did_stop is stopped


@pytest.mark.parametrize(
    ("feeds", "stops", "per_feed"),
    [
        # What is held back is exactly the tail that could still become a stop sequence.
        pytest.param([b"ab", b"c", b"d"], ("cd",), ["ab", "", ""], id="held-until-complete"),
        pytest.param([b"ab", b"c", b"x"], ("cd",), ["ab", "", "cx"], id="held-until-mismatch"),
        pytest.param([b"</", b"e", b"nd>"], ("</end>",), ["", "", ""], id="tag-stop"),
        pytest.param([b"a<", b"b"], ("</end>",), ["a", "<b"], id="angle-released"),
    ],
)
def test_holdback_per_feed(feeds: list[bytes], stops: tuple[str, ...], per_feed: list[str]) -> None:
    emitted, _, _ = run(feeds, stops)
    assert emitted == per_feed


@pytest.mark.parametrize("after", [b"more", b"STOP", "😀".encode()])
def test_nothing_emitted_after_stop(after: bytes) -> None:
    stream = TextStream(("STOP",))
    assert stream.feed(b"keep STOP drop") == "keep "
    assert stream.stopped
    assert stream.feed(after) == ""
    assert stream.finish() == ""
    assert stream.stopped


def test_pending_bytes_are_dropped_after_stop() -> None:
    stream = TextStream(("!",))
    assert stream.feed(b"hi!" + EMOJI[:2]) == "hi"
    assert stream.finish() == ""


def test_finish_releases_held_text_once() -> None:
    stream = TextStream(("STOP",))
    assert stream.feed(b"a STO") == "a "
    assert stream.finish() == "STO"
    assert stream.finish() == ""
