"""Instance -> exact source text, for re-tokenising selected instances with another tokenizer.

A byte-level BPE token is a fixed byte string (GPT-2's byte<->unicode table), so the bytes of a
document are the concatenation of its tokens' bytes and an instance is an exact byte span of its
documents. A span can start or end inside a multi-byte UTF-8 character; each character goes to the
instance holding its first byte (the instance drops leading continuation bytes and borrows the
trailing ones from the next tokens). The texts of consecutive instances therefore concatenate to
the source document exactly, which `hf_tokenizer.decode` on a chunk would not guarantee (it turns
a split character into U+FFFD). EOD tokens are not text: they split an instance into pieces, one
per source document.
"""

from __future__ import annotations

import functools
from typing import List, Tuple

import numpy

from megakd.errors import DataError


@functools.lru_cache(maxsize=1)
def _unicode_to_byte() -> dict:
    """Inverse of GPT-2's bytes_to_unicode table (printable stand-ins for the 256 bytes)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class ByteLevelText:
    """Token ids -> bytes for a byte-level BPE tokenizer (GPT-2, SmolLM2, Qwen, Llama-3 style)."""

    def __init__(self, hf_tokenizer, eod: int):
        table = _unicode_to_byte()
        special = set(hf_tokenizer.all_special_ids)
        self.eod = int(eod)
        self.bytes: List[bytes] = [b""] * len(hf_tokenizer)
        for token, i in hf_tokenizer.get_vocab().items():
            if i in special:
                self.bytes[i] = token.encode("utf-8")
            elif all(c in table for c in token):
                self.bytes[i] = bytes(table[c] for c in token)
            else:
                raise DataError(f"tokenizer {getattr(hf_tokenizer, 'name_or_path', '')!r} is not "
                                f"byte-level BPE (token {token!r}); cross-family selection needs "
                                f"the teacher's corpus tokenized with a byte-level BPE tokenizer")

    def to_bytes(self, ids) -> bytes:
        return b"".join(self.bytes[int(i)] for i in ids)

    def pieces(self, stream: numpy.ndarray, start: int, end: int) -> List[Tuple[str, bool]]:
        """Text of stream[start:end] split at EOD: [(text, followed by EOD)]."""
        out = []
        ids = stream[start:end]
        cuts = numpy.flatnonzero(ids == self.eod)
        a = 0
        for b in list(cuts) + [len(ids)]:
            ends_doc = b < len(ids)
            if a < b or ends_doc:
                out.append((self._text(stream, start + a, start + b, ends_doc), ends_doc))
            a = b + 1
        return out

    def _text(self, stream, a: int, b: int, ends_doc: bool) -> str:
        data = self.to_bytes(stream[a:b])
        lead = 0
        while lead < len(data) and _is_continuation(data[lead]):
            lead += 1  # finishes a character that belongs to the previous instance
        tail = b""
        if not ends_doc and lead < len(data):  # borrow the bytes that finish our last character
            j = b
            while j < len(stream) and stream[j] != self.eod and len(tail) < 4:
                nxt = self.bytes[int(stream[j])]
                k = 0
                while k < len(nxt) and _is_continuation(nxt[k]):
                    k += 1
                tail += nxt[:k]
                if k < len(nxt):
                    break
                j += 1
        try:
            return (data[lead:] + tail).decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"tokens [{a}, {b}) of the corpus are not valid UTF-8 ({e.reason}); "
                            f"was it tokenized with this tokenizer?") from e


def _is_continuation(byte: int) -> bool:
    return byte & 0xC0 == 0x80
