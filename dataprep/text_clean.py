"""Text cleaning, pure: Unicode and whitespace normalisation, control characters, personal data (dataprep/pii.py),
length bounds and exact duplicates, each counted."""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from config.params import CleanParams

log = logging.getLogger(__name__)


_SPACES = re.compile(r"[^\S\n]+")  # runs of whitespace other than newlines


_INDENT = re.compile(r"^[ \t]*")


_BLANK_LINES = re.compile(r"\n{3,}")


def strip_controls(text: str) -> tuple[str, int]:
    """Remove control and format characters except newline and tab; return the text and how many went."""
    kept = [c for c in text if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co")]
    return "".join(kept), len(text) - len(kept)


def normalize(text: str) -> tuple[str, int]:
    """Return NFC text with controls stripped and whitespace normalised, plus the count of controls removed.

    Leading indentation is kept (tabs as 4 spaces) because it carries meaning in code and lists; runs of
    whitespace inside a line collapse to one space; trailing whitespace and surplus blank lines go."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text, n_controls = strip_controls(text)
    lines = []
    for line in text.split("\n"):
        lead = _INDENT.match(line).group()
        body = _SPACES.sub(" ", line[len(lead):]).strip()
        lines.append(lead.replace("\t", "    ") + body if body else "")
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip(), n_controls


@dataclass(frozen=True)
class CleanResult:
    texts: list[str]
    counts: dict[str, int]  # documents_in/out, dropped_* by reason, pii_* by kind, control_chars_removed, chars


def clean_documents(texts: list[str], cfg: CleanParams) -> CleanResult:
    """Normalise each document and handle its personal data (`cfg.pii`); keep the first of exact duplicates; drop
    documents outside the length bounds."""
    from dataprep.pii import KINDS, redact

    counts: Counter[str] = Counter(documents_in=len(texts), chars_in=sum(len(t) for t in texts))
    seen: set[bytes] = set()
    kept = []
    for raw in texts:
        text, n_controls = normalize(raw)
        counts["control_chars_removed"] += n_controls
        redacted, found = redact(text)
        counts.update({f"pii_{kind}": n for kind, n in found.items()})
        counts["documents_with_pii"] += bool(found)
        if cfg.pii == "redact":
            text = redacted
        digest = hashlib.sha256(text.encode("utf-8")).digest()
        if not text:
            counts["dropped_empty"] += 1
        elif found and cfg.pii == "drop":
            counts["dropped_pii"] += 1
        elif digest in seen:
            counts["dropped_duplicate"] += 1
        elif len(text) < cfg.min_chars:
            counts["dropped_too_short"] += 1
        elif len(text) > cfg.max_chars:
            counts["dropped_too_long"] += 1
        else:
            kept.append(text)
        seen.add(digest)
    counts["documents_out"] = len(kept)
    counts["chars_out"] = sum(len(t) for t in kept)
    for reason in ("dropped_empty", "dropped_duplicate", "dropped_too_short", "dropped_too_long", "dropped_pii",
                   "documents_with_pii", "control_chars_removed", *(f"pii_{kind}" for kind in KINDS)):
        counts.setdefault(reason, 0)
    counts["pii_total"] = sum(counts[f"pii_{kind}"] for kind in KINDS)
    return CleanResult(kept, dict(counts))
