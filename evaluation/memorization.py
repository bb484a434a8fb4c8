"""Pure logic of text copy and diversity scores: verbatim spans of the training text inside generated samples,
distinct-n and within-sample repetition.

Memorization (`SpanIndex`, `memorization`): a sample copies the training text when it contains a verbatim span of
at least `min_chars` characters (code points) of one training document. The index keeps the training documents as
one array of code points, joined by a separator that no sample can match, so a span never crosses two documents.

Why it stays fast and small on 100 MB: any span of L = `min_chars` characters contains a whole window of k characters
starting at a multiple of s when k + s - 1 <= L, so only the windows at positions 0, s, 2s, ... are hashed (k = L // 2,
s = L - k + 1: about 2 / L windows per character, 3 M for 100 MB at L = 64). Their 64-bit polynomial hashes are
kept sorted next to their positions. A query hashes every k-window of every sample and looks the hashes up with
`np.searchsorted`. A window inside a span of >= L characters has >= s - 1 matching characters around it, so at least
s // 2 on one side: 32-bit hashes of the s // 2 characters before and after each indexed window drop most
candidates (common phrases, runs of spaces) without touching the text. The rest are compared with the training text
itself and extended left and right to the maximal span, all vectorized, so hash collisions cost time but never
produce a false match. Candidates on one diagonal (training position - sample position) inside one verified span
are that span and are skipped: each maximal span is extended once per place it occurs in the training text.

Memory: the code points in the narrowest dtype that holds them (1 byte per character for Latin-1 text, 2 for the
BMP, 4 otherwise) plus 20 bytes per indexed window; building holds the joined text once more as a Python str.
Time: building is a few numpy passes and one sort; a query costs about its number of (sample window, training
window) candidates, which grows with how often the copied text recurs in the training text.

Diversity (`distinct_n`, `repetition_rate`, `diversity`) works on whitespace-split words, so it compares generators
with different tokenizers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np

__all__ = ["Match", "SpanIndex", "distinct_n", "diversity", "memorization", "repetition_rate"]

_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the polynomial window hash (mod 2**64)
_SEPARATOR = "\x00"  # between training documents; every "\x00" of a sample becomes _BARRIER, so it never matches
_BARRIER = np.uint32(0xFFFFFFFF)  # not a code point: around and inside samples, equal to no training character
_ENCODE_CHARS = 1 << 22  # characters encoded at a time (16 MB of UTF-32) when the corpus is not Latin-1
_HASH_WINDOWS = 1 << 20  # training windows hashed at a time (bounds the uint64 temporaries to 8 MB each)
_PAIR_CHUNK = 1 << 18  # (sample window, training window) candidates handled at a time
_EXTEND_ROWS = 1 << 15  # candidates extended at a time
_BLOCK = 64  # characters compared per candidate and step when extending
_PAD = 128  # separators or barriers at both ends of the training and sample arrays, >= _BLOCK


class Match(NamedTuple):
    """The longest verbatim span of the training text in one sample (length 0 and -1 elsewhere when none)."""

    length: int  # characters; 0 when no span reaches min_chars
    start: int  # first character of the span in the sample
    doc: int  # index of the training document (in the order given to `SpanIndex.build`)
    doc_start: int  # first character of the span in that document


_NO_MATCH = Match(0, -1, -1, -1)


# ---------------------------------------------------------------------------------------------- code points


def _code_points(text: str) -> np.ndarray:
    """Return the code points of `text` in the narrowest unsigned dtype that holds them (uint8, uint16 or uint32)."""
    try:
        return np.frombuffer(text.encode("latin-1"), dtype=np.uint8)  # one byte per character, no copy of values
    except UnicodeEncodeError:
        pass

    def chunks() -> Iterator[np.ndarray]:
        for at in range(0, len(text), _ENCODE_CHARS):  # chunked: UTF-32 of 100 MB would be 400 MB at once
            yield np.frombuffer(text[at : at + _ENCODE_CHARS].encode("utf-32-le", "surrogatepass"), dtype="<u4")

    highest = max(int(chunk.max()) for chunk in chunks())
    codes = np.empty(len(text), dtype=np.uint16 if highest < 1 << 16 else np.uint32)
    for at, chunk in zip(range(0, len(text), _ENCODE_CHARS), chunks()):
        codes[at : at + len(chunk)] = chunk
    return codes


def _window_hashes(codes: np.ndarray, k: int, stride: int) -> np.ndarray:
    """Return the polynomial hashes (uint64, wrapping) of the k-windows of `codes` starting at 0, stride, 2*stride..."""
    n_windows = (len(codes) - k) // stride + 1 if len(codes) >= k else 0
    hashes = np.zeros(n_windows, dtype=np.uint64)
    for j in range(k):  # h = c_0 B^(k-1) + c_1 B^(k-2) + ... + c_(k-1), one strided column at a time
        hashes *= _BASE
        hashes += codes[j :: stride][:n_windows]
    return hashes


def _starts(lengths: list[int]) -> np.ndarray:
    """Return where each text starts in _PAD separators, text 0, separator, text 1, ..., _PAD separators."""
    return _PAD + np.cumsum([0] + [n + 1 for n in lengths[:-1]], dtype=np.int64) if lengths else np.zeros(0, np.int64)


def _strided_hashes(codes: np.ndarray, first: int, n: int, k: int, stride: int) -> np.ndarray:
    """Return the hashes of the k-windows of `codes` starting at first, first + stride, ... (n of them), a bounded
    number at a time; 0 for those starting before 0 or ending past the end."""
    hashes = np.zeros(n, dtype=np.uint64)
    lowest = -(first // stride) if first < 0 else 0  # first window number starting at >= 0
    highest = min(n, (len(codes) - k - first) // stride + 1) if len(codes) - k - first >= 0 else 0
    for a in range(lowest, highest, _HASH_WINDOWS):
        b = min(a + _HASH_WINDOWS, highest)
        hashes[a:b] = _window_hashes(codes[first + a * stride : first + (b - 1) * stride + k], k, stride)
    return hashes


def _extend(queries: np.ndarray, corpus: np.ndarray, q: np.ndarray, c: np.ndarray, direction: int,
            limit: int | None = None) -> np.ndarray:
    """Return, for each pair of positions (q[i], c[i]), how many characters match from there on going right
    (direction +1, the characters at q[i] and c[i] included) or going left (direction -1, those excluded), counting
    no further than `limit` when given.

    Compares _BLOCK characters per candidate and step, read as rows of sliding-window views (a row copy costs about
    what one character does). Both arrays hold _PAD >= _BLOCK characters at each end that never match each other
    (training separators, sample barriers): every comparison stops there at the latest, and a block read past the
    stop stays in bounds."""
    query_blocks = np.lib.stride_tricks.sliding_window_view(queries, _BLOCK)  # (n - _BLOCK + 1, _BLOCK), no copy
    corpus_blocks = np.lib.stride_tricks.sliding_window_view(corpus, _BLOCK)
    back = 0 if direction > 0 else _BLOCK  # going left, a block ends where the comparison stands
    matched = np.zeros(len(q), dtype=np.int64)
    for first in range(0, len(q), _EXTEND_ROWS):  # bounds the (rows, _BLOCK) temporaries
        active = np.arange(first, min(first + _EXTEND_ROWS, len(q)))
        offset = 0
        while active.size:
            shift = direction * offset - back
            differs = query_blocks[q[active] + shift] != corpus_blocks[c[active] + shift]  # (rows, _BLOCK)
            if direction < 0:
                differs = differs[:, ::-1]  # nearest character first
            stopped = differs.any(axis=1)
            matched[active[stopped]] = offset + differs[stopped].argmax(axis=1)
            offset += _BLOCK
            if limit is not None and offset >= limit:
                matched[active[~stopped]] = offset
                break
            active = active[~stopped]
    return matched if limit is None else np.minimum(matched, limit)


# ---------------------------------------------------------------------------------------------- the index


class SpanIndex:
    """Index of a training text for finding verbatim spans of >= min_chars characters of it inside generated text."""

    def __init__(self, codes: np.ndarray, doc_starts: np.ndarray, min_chars: int):
        """Index code points `codes` laid out as by `build`: _PAD separators, doc 0, separator, doc 1, ..., _PAD
        separators, with each document's first character at `doc_starts`."""
        if min_chars < 1:
            raise ValueError(f"min_chars must be >= 1, got {min_chars}")
        self.min_chars = min_chars
        self.k = max(1, min_chars // 2)  # hashed window length
        self.stride = min_chars - self.k + 1  # distance between hashed windows: k + stride - 1 == min_chars
        # A window inside a span >= min_chars has >= stride - 1 matching characters around it, so >= stride // 2 on
        # one side: hashes of the `context` characters either side drop most candidates before any comparison.
        self.context = self.stride // 2
        self._codes = codes
        self._doc_starts = doc_starts  # (n_docs,) int64: position of each document's first character in _codes
        n_windows = (len(codes) - self.k) // self.stride + 1 if len(codes) >= self.k else 0
        hashes = _strided_hashes(codes, 0, n_windows, self.k, self.stride)
        order = np.argsort(hashes, kind="stable")
        self._hashes = hashes[order]  # (n_windows,) uint64, sorted
        del hashes
        # start in _codes of the window of each hash; windows are at multiples of stride
        self._positions = (order * self.stride).astype(np.uint32 if len(codes) < 1 << 32 else np.int64)
        del order
        # (n_windows,) uint32 by window number (position // stride): hash of the context before / after it
        self._before = _strided_hashes(codes, -self.context, n_windows, self.context, self.stride).astype(np.uint32)
        self._after = _strided_hashes(codes, self.k, n_windows, self.context, self.stride).astype(np.uint32)

    @classmethod
    def build(cls, texts: Iterable[str], min_chars: int) -> SpanIndex:
        """Index training documents `texts` for spans of at least `min_chars` characters."""
        lengths: list[int] = []

        def counted(texts: Iterable[str]) -> Iterator[str]:
            for text in texts:
                lengths.append(len(text))
                yield text

        pad = _SEPARATOR * (_PAD - 1)  # with the separators around the first and last documents: _PAD of them
        joined = _SEPARATOR.join(itertools.chain([pad], counted(texts), [pad]))
        codes = _code_points(joined)
        del joined
        return cls(codes, _starts(lengths), min_chars)

    @property
    def nbytes(self) -> int:
        """Memory held by the index's arrays."""
        return sum(a.nbytes for a in (self._codes, self._doc_starts, self._hashes, self._positions, self._before,
                                      self._after))

    def longest_match(self, sample: str) -> Match:
        """Return the longest verbatim span of the training text in `sample` (length 0 if none reaches min_chars)."""
        return self.longest_matches([sample])[0]

    def longest_matches(self, samples: list[str]) -> list[Match]:
        """Return `longest_match` of every sample, in one vectorized pass; ties go to the earliest start in the
        sample, then to the earliest place in the training text."""
        return self._longest(samples, *self._spans(samples))

    def spans(self, samples: list[str]) -> list[list[tuple[int, int]]]:
        """Return, per sample, the distinct (start, length) of its maximal verbatim spans of >= min_chars, sorted."""
        return _per_sample(samples, *self._spans(samples))

    def _longest(self, samples: list[str], starts: np.ndarray, lengths: np.ndarray, positions: np.ndarray,
                 sample_ids: np.ndarray) -> list[Match]:
        """Return the longest of the spans found (`_spans`) of each sample."""
        matches = [_NO_MATCH] * len(samples)
        if not len(lengths):
            return matches
        order = np.lexsort((positions, starts, -lengths, sample_ids))
        first = order[np.r_[True, sample_ids[order][1:] != sample_ids[order][:-1]]]  # best span of each sample
        docs = np.searchsorted(self._doc_starts, positions[first], side="right") - 1
        for at, doc in zip(first, docs):
            matches[sample_ids[at]] = Match(int(lengths[at]), int(starts[at]), int(doc),
                                            int(positions[at] - self._doc_starts[doc]))
        return matches

    def _spans(self, samples: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return every maximal span >= min_chars as arrays (start in its sample, length, start in _codes, sample)."""
        k = self.k
        # 1. all samples as one array: _PAD barriers, sample 0, barrier, sample 1, ..., _PAD barriers
        pad = _SEPARATOR * (_PAD - 1)
        queries = np.frombuffer(_SEPARATOR.join([pad, *samples, pad]).encode("utf-32-le", "surrogatepass"),
                                dtype="<u4").copy()
        barrier = queries == 0
        queries[barrier] = _BARRIER
        sample_starts = _starts([len(s) for s in samples])
        # 2. hash every sample window without a barrier in it and look it up
        hashes = _window_hashes(queries, k, 1)
        context = _window_hashes(queries, self.context, 1).astype(np.uint32) if self.context else None
        n_barriers = np.r_[0, np.cumsum(barrier)]
        clean = np.flatnonzero(n_barriers[k : k + len(hashes)] == n_barriers[: len(hashes)])
        clean = clean[np.argsort(hashes[clean], kind="stable")]  # sorted keys make searchsorted cache-friendly
        low = np.searchsorted(self._hashes, hashes[clean], side="left")
        high = np.searchsorted(self._hashes, hashes[clean], side="right")
        hit = high > low
        window_at, low, counts = clean[hit], low[hit], (high - low)[hit]
        # 3. verify and extend the candidates, a bounded number of (sample window, training window) pairs at a time
        ends = np.cumsum(counts)
        found = []
        for first in range(0, int(ends[-1]) if len(ends) else 0, _PAIR_CHUNK):
            pair = np.arange(first, min(first + _PAIR_CHUNK, int(ends[-1])))
            window = np.searchsorted(ends, pair, side="right")
            q = window_at[window].astype(np.int64)
            c = self._positions[low[window] + pair - (ends[window] - counts[window])].astype(np.int64)
            if self.context:  # keep the pairs whose context matches on one side at least (see __init__)
                number = c // self.stride
                near = ((context.take(q - self.context, mode="clip") == self._before[number])  # clip: see _extend
                        | (context.take(q + k, mode="clip") == self._after[number]))
                q, c = q[near], c[near]
            found.append(self._verify(queries, q, c))
        if not found:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty, empty
        q_start, length, c_start = (np.concatenate(parts) for parts in zip(*found))
        sample_ids = np.searchsorted(sample_starts, q_start, side="right") - 1
        return q_start - sample_starts[sample_ids], length, c_start, sample_ids

    def _verify(self, queries: np.ndarray, q: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, ...]:
        """Return the maximal spans >= min_chars through candidate pairs (q, c) as (q start, length, c start).

        Rounds: the first pending pair of each diagonal (c - q) is compared and extended; pending pairs of that
        diagonal whose window lies inside the verified span are the same span and are dropped with it."""
        k = self.k
        order = np.lexsort((q, c - q))
        q, c = q[order], c[order]
        spans = []
        while len(q):
            diagonal = c - q
            head = np.r_[True, diagonal[1:] != diagonal[:-1]]
            q_head, c_head = q[head], c[head]
            # around the window first (most candidates fail there), then the window itself for those that pass
            left = _extend(queries, self._codes, q_head, c_head, -1)
            right = _extend(queries, self._codes, q_head + k, c_head + k, +1)
            long = np.flatnonzero(left + right >= self.stride - 1)
            long = long[_extend(queries, self._codes, q_head[long], c_head[long], +1, limit=k) == k]  # no collision
            spans.append((q_head[long] - left[long], k + (left + right)[long], c_head[long] - left[long]))
            # pending pairs inside a verified span of their diagonal are that span: drop them with their head
            span_end = np.full(len(q_head), -1)
            span_end[long] = q_head[long] + k + right[long]
            pending = ~head & (q + k > span_end[np.cumsum(head) - 1])
            q, c = q[pending], c[pending]
        return tuple(np.concatenate(parts) for parts in zip(*spans)) if spans else (np.zeros(0, np.int64),) * 3


def memorization(samples: list[str], index: SpanIndex) -> dict:
    """Return the share of samples holding a verbatim training span of >= index.min_chars characters, and details.

    Keys: memorization (share of samples, 0.0 for no samples), memorized_samples (count), memorization_longest_chars
    (longest span over all samples, 0 if none), memorized_char_share (characters of all samples inside such spans
    over all characters), min_chars, n_samples, and `samples`: per sample its longest span (longest_chars, start,
    doc, doc_start as in `Match`) and memorized_chars (characters inside any such span)."""
    found = index._spans(samples)
    matches = index._longest(samples, *found)
    covered = [_covered(spans) for spans in _per_sample(samples, *found)]
    n_memorized = sum(m.length > 0 for m in matches)
    n_chars = sum(len(s) for s in samples)
    return {
        "memorization": n_memorized / len(samples) if samples else 0.0,
        "memorized_samples": n_memorized,
        "memorization_longest_chars": max((m.length for m in matches), default=0),
        "memorized_char_share": sum(covered) / n_chars if n_chars else 0.0,
        "min_chars": index.min_chars,
        "n_samples": len(samples),
        "samples": [{"longest_chars": m.length, "start": m.start, "doc": m.doc, "doc_start": m.doc_start,
                     "memorized_chars": n} for m, n in zip(matches, covered)],
    }


def _per_sample(samples: list[str], starts: np.ndarray, lengths: np.ndarray, positions: np.ndarray,
                sample_ids: np.ndarray) -> list[list[tuple[int, int]]]:
    """Return the distinct (start, length) of the spans found (`SpanIndex._spans`) of each sample, sorted."""
    found: list[list[tuple[int, int]]] = [[] for _ in samples]
    order = np.lexsort((lengths, starts, sample_ids))
    keys = np.stack([sample_ids[order], starts[order], lengths[order]])  # (3, n_spans)
    distinct = np.r_[True, (keys[:, 1:] != keys[:, :-1]).any(axis=0)] if keys.shape[1] else np.zeros(0, bool)
    for sample_id, start, length in keys[:, distinct].T.tolist():
        found[sample_id].append((start, length))
    return found


def _covered(spans: list[tuple[int, int]]) -> int:
    """Return how many characters the union of sorted (start, length) intervals covers."""
    total, reached = 0, 0
    for start, length in spans:
        end = start + length
        if end > reached:
            total += end - max(start, reached)
            reached = end
    return total


# ---------------------------------------------------------------------------------------------- diversity


def _ngrams(sample: str, n: int) -> list[tuple[str, ...]]:
    words = sample.split()
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(samples: list[str], n: int) -> float:
    """Return distinct word n-grams over all n-grams of all samples (n-grams never cross samples); 0.0 when the
    samples hold no n-gram at all (every sample shorter than n words)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [gram for sample in samples for gram in _ngrams(sample, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(samples: list[str], n: int = 4) -> float:
    """Return the mean over samples of the share of a sample's word n-grams that repeat an earlier n-gram of the
    same sample (a degenerate loop tends to 1). Samples shorter than n words have no n-gram and are left out of the
    mean; 0.0 when no sample has one."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    shares = []
    for sample in samples:
        grams = _ngrams(sample, n)
        if grams:
            shares.append(1 - len(set(grams)) / len(grams))
    return float(np.mean(shares)) if shares else 0.0


def diversity(samples: list[str]) -> dict:
    """Return distinct-1/2/3 over all samples and the mean within-sample 4-gram repetition rate."""
    return {"distinct_1": distinct_n(samples, 1), "distinct_2": distinct_n(samples, 2),
            "distinct_3": distinct_n(samples, 3), "repetition_rate": repetition_rate(samples, 4)}
