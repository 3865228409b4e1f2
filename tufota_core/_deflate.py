"""Deflate token streams: a gzip file as the byte string of its tokens, and back, bit for bit.

A gzip file's deflate stream is a sequence of blocks of *tokens* (literal
bytes, length/distance pairs, end of block). Once the tokens, the block
types and each dynamic block's Huffman header bits are known, writing the
stream again is deterministic: every symbol has exactly one canonical code.
So a file that changed a little (a changelog with a new entry on top) has a
token string that changed a little, even though its compressed bytes differ
from the first change on; deltas diff the token strings instead.

Token string (``tokens_of`` writes it, ``encode_tokens`` reads it)::

    varint(n) gzip header (n bytes, verbatim)
    block*    header byte BFINAL | BTYPE << 1, then
              stored:   padding bits (1 byte) | LEN (u16 le) | LEN data bytes
              fixed:    tokens, end of block
              dynamic:  varint(bits) | header bits after BTYPE, LSB first
                        (ceil(bits / 8) bytes) | tokens, end of block
    padding bits after the final block (1 byte) | gzip trailer (8 bytes)

    token     a byte b != 0xFF        literal b
              0xFF c d1 d0, c < 0xFE  match of length c + 3, distance (d1 << 8 | d0) + 1
              0xFF 0xFE 0x00          literal 0xFF
              0xFF 0xFE 0x01          end of block
              0xFF 0xFE 0x02 d1 d0    match of length 257
              0xFF 0xFE 0x03 d1 d0    match of length 258

Invariants:
* ``tokens_of`` never inflates: it decodes codes only, so its work and
  memory are bounded by the compressed size and ``limit``.
* ``encode_tokens(tokens_of(f))`` either equals ``f`` or the generator does
  not use this encoding for ``f``; a device checks every result against the
  signed image's hash anyway.
* Either function raises only :class:`TokenError` on bad input, never
  another exception and never loops without consuming input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

_LEN_BASE = (3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83,
             99, 115, 131, 163, 195, 227, 258)  # fmt: skip
_LEN_EXTRA = (0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0)
_DIST_BASE = (1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025,
              1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577)  # fmt: skip
_DIST_EXTRA = (0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11,
               12, 12, 13, 13)  # fmt: skip
_CL_ORDER = (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15)
_FIXED_LIT = [8] * 144 + [9] * 112 + [7] * 24 + [8] * 8
_FIXED_DIST = [5] * 30

# Symbol and extra bits of every match length and distance (canonical: 258 is symbol 285).
_LEN_SYM: list[tuple[int, int, int]] = [(0, 0, 0)] * 259
for _s in range(29):
    for _v in range(1 << _LEN_EXTRA[_s]):
        _n = _LEN_BASE[_s] + _v
        if _n <= 258 and not (_n == 258 and _s != 28):
            _LEN_SYM[_n] = (257 + _s, _v, _LEN_EXTRA[_s])
_DIST_SYM = bytearray(32769)
for _s in range(30):
    for _v in range(1 << _DIST_EXTRA[_s]):
        _DIST_SYM[_DIST_BASE[_s] + _v] = _s

ESC = 0xFF
_EOB = b"\xff\xfe\x01"
_LIT_FF = b"\xff\xfe\x00"


class TokenError(Exception):
    """A deflate stream or token string is malformed, too large, or not exactly reproducible."""


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _varint(data: bytes | bytearray, at: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(at, min(at + 10, len(data))):
        b = data[i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i + 1
        shift += 7
    raise TokenError("token string has a bad number")


def _canonical(lengths: list[int]) -> list[int]:
    """Canonical codes (bit-reversed, as written LSB first), 0 where a symbol has no code."""
    count = [0] * 16
    for n in lengths:
        count[n] += 1
    count[0] = 0
    left = 1
    for n in range(1, 16):
        left = (left << 1) - count[n]
        if left < 0:
            raise TokenError("over-subscribed Huffman code")
    code, nxt = 0, [0] * 16
    for n in range(1, 16):
        code = (code + count[n - 1]) << 1
        nxt[n] = code
    out = [0] * len(lengths)
    for sym, n in enumerate(lengths):
        if n:
            c = nxt[n]
            nxt[n] += 1
            out[sym] = int(format(c, f"0{n}b")[::-1], 2)
    return out


def _decode_table(lengths: list[int]) -> tuple[list[int], int]:
    """Lookup table indexed by the next ``bits`` input bits: ``symbol << 4 | length`` (0: none)."""
    bits = max(lengths, default=0)
    if not bits:
        return [0], 0
    codes = _canonical(lengths)
    table = [0] * (1 << bits)
    for sym, n in enumerate(lengths):
        if n:
            step = 1 << n
            table[codes[sym] :: step] = [sym << 4 | n] * (1 << (bits - n))
    return table, bits


def _read_code_lengths(read: Callable[[int], int]) -> tuple[list[int], list[int]]:
    """Read a dynamic block header through ``read(nbits) -> int``; (lit/len, distance) lengths."""
    hlit = read(5) + 257
    hdist = read(5) + 1
    hclen = read(4) + 4
    if hlit > 286 or hdist > 30:
        raise TokenError("dynamic block declares too many codes")
    cl = [0] * 19
    for i in range(hclen):
        cl[_CL_ORDER[i]] = read(3)
    table, bits = _decode_table(cl)
    lengths: list[int] = []
    while len(lengths) < hlit + hdist:
        sym = _read_symbol(read, table, bits)
        if sym < 16:
            lengths.append(sym)
        elif sym == 16:
            if not lengths:
                raise TokenError("repeat with no previous length")
            lengths += [lengths[-1]] * (3 + read(2))
        elif sym == 17:
            lengths += [0] * (3 + read(3))
        else:
            lengths += [0] * (11 + read(7))
    if len(lengths) != hlit + hdist:
        raise TokenError("code lengths overrun the header")
    lit, dist = lengths[:hlit], lengths[hlit:]
    if not lit[256]:
        raise TokenError("block has no end-of-block code")
    return lit, dist


def _read_symbol(read: Callable[[int], int], table: list[int], bits: int) -> int:
    """Decode one symbol bit by bit (headers only: few symbols)."""
    if not bits:
        raise TokenError("empty code-length code")
    code = 0
    for n in range(1, bits + 1):
        code |= read(1) << (n - 1)
        # An entry for a code of length n repeats every 2**n slots; index by the bits so far.
        entry = table[code]
        if entry and entry & 15 == n:
            return entry >> 4
    raise TokenError("invalid code in a dynamic block header")


_NO_CODE = (255, 0)  # longer than any bit buffer: an invalid code reads as cut short


def _fast_table(lengths: list[int]) -> tuple[list[tuple[int, int]], int]:
    """Like :func:`_decode_table`, with ``(length, symbol)`` entries for the token loop."""
    table, bits = _decode_table(lengths)
    pairs = {e: (e & 15, e >> 4) for e in set(table) if e}
    return [pairs[e] if e else _NO_CODE for e in table], bits


class _Bits:
    """LSB-first reader over an int of known width (dynamic headers only)."""

    def __init__(self, value: int, width: int) -> None:
        self.value, self.width, self.pos = value, width, 0

    def __call__(self, n: int) -> int:
        if self.pos + n > self.width:
            raise TokenError("dynamic block header is cut short")
        v = (self.value >> self.pos) & ((1 << n) - 1)
        self.pos += n
        return v


def _gzip_header_length(data: bytes) -> int:
    if len(data) < 18 or data[:3] != b"\x1f\x8b\x08" or data[3] & 0xE0:
        raise TokenError("not a gzip file")
    flags, at = data[3], 10
    try:
        if flags & 4:
            at += 2 + (data[at] | data[at + 1] << 8)
        if flags & 8:
            at = data.index(0, at) + 1
        if flags & 16:
            at = data.index(0, at) + 1
    except (IndexError, ValueError) as e:
        raise TokenError("gzip header is cut short") from e
    if flags & 2:
        at += 2
    if at > len(data) - 8:
        raise TokenError("gzip header is cut short")
    return at


def tokens_of(data: bytes, limit: int) -> bytes:
    """The token string of the single-member gzip file ``data``.

    Raises:
        TokenError: not a single gzip member, a malformed deflate stream, or a
            token string longer than ``limit``.
    """
    start = _gzip_header_length(data)
    out = bytearray(encode_varint(start))
    out += data[:start]
    size = len(data)
    pos, buf, cnt = start, 0, 0  # next byte, bit buffer, bits in it
    fixed_lit, fixed_bits = _fast_table(_FIXED_LIT)
    fixed_dist, fixed_dbits = _fast_table(_FIXED_DIST)
    append = out.append
    final = 0
    while not final:
        while cnt < 3:
            if pos >= size:
                raise TokenError("deflate stream is cut short")
            buf |= data[pos] << cnt
            pos += 1
            cnt += 8
        final, btype = buf & 1, (buf >> 1) & 3
        buf >>= 3
        cnt -= 3
        out.append(final | btype << 1)
        if btype == 0:
            pad = cnt & 7
            out.append(buf & ((1 << pad) - 1))
            pos -= cnt >> 3
            buf = cnt = 0
            if pos + 4 > size:
                raise TokenError("stored block is cut short")
            n = data[pos] | data[pos + 1] << 8
            if n ^ (data[pos + 2] | data[pos + 3] << 8) != 0xFFFF:
                raise TokenError("stored block length check fails")
            if pos + 4 + n > size:
                raise TokenError("stored block is cut short")
            out += data[pos : pos + 2]
            out += data[pos + 4 : pos + 4 + n]
            pos += 4 + n
            continue
        if btype == 1:
            lit, lbits, dist, dbits = fixed_lit, fixed_bits, fixed_dist, fixed_dbits
        elif btype == 2:
            first = pos * 8 - cnt
            reader = _StreamBits(data, first)
            lit_lengths, dist_lengths = _read_code_lengths(reader)
            nbits = reader.pos - first
            raw = int.from_bytes(data[first >> 3 : (reader.pos + 7) >> 3], "little")
            out += encode_varint(nbits)
            out += ((raw >> (first & 7)) & ((1 << nbits) - 1)).to_bytes((nbits + 7) >> 3, "little")
            lit, lbits = _fast_table(lit_lengths)
            dist, dbits = _fast_table(dist_lengths)
            pos, buf, cnt = reader.pos >> 3, 0, 0
            if reader.pos & 7:
                buf = data[pos] >> (reader.pos & 7)
                cnt = 8 - (reader.pos & 7)
                pos += 1
        else:
            raise TokenError("reserved block type")
        lmask, dmask = (1 << lbits) - 1, (1 << dbits) - 1
        while True:
            if cnt < 48:
                take = 6 if pos + 6 <= size else size - pos
                buf |= int.from_bytes(data[pos : pos + take], "little") << cnt
                pos += take
                cnt += 8 * take
            n, sym = lit[buf & lmask]
            if n > cnt:
                raise TokenError("invalid or cut-short literal/length code")
            buf >>= n
            cnt -= n
            if sym < ESC:
                append(sym)
                continue
            if sym == ESC:
                out += _LIT_FF
                continue
            if sym == 256:
                out += _EOB
                break
            s = sym - 257
            if s > 28:
                raise TokenError("invalid length symbol")
            e = _LEN_EXTRA[s]
            length = _LEN_BASE[s] + (buf & ((1 << e) - 1))
            buf >>= e
            cnt -= e
            if not dbits:
                raise TokenError("match in a block without distance codes")
            n, s = dist[buf & dmask]
            if n > cnt:
                raise TokenError("invalid or cut-short distance code")
            buf >>= n
            cnt -= n
            if s > 29:
                raise TokenError("invalid distance symbol")
            e = _DIST_EXTRA[s]
            d = _DIST_BASE[s] + (buf & ((1 << e) - 1)) - 1
            buf >>= e
            cnt -= e
            if cnt < 0 or length > 258:
                raise TokenError("deflate stream is cut short")
            if length <= 256:
                out += bytes((ESC, length - 3, d >> 8, d & 0xFF))
            else:
                out += bytes((ESC, 0xFE, length - 255, d >> 8, d & 0xFF))
        if len(out) > limit:
            raise TokenError(f"token string exceeds {limit} bytes")
    pad = cnt & 7
    append(buf & ((1 << pad) - 1))
    pos -= cnt >> 3
    if pos + 8 != size:
        raise TokenError("gzip file has data after its trailer, or several members")
    out += data[pos:]
    if len(out) > limit:
        raise TokenError(f"token string exceeds {limit} bytes")
    return bytes(out)


class _StreamBits:
    """LSB-first reader over ``data`` from bit ``pos`` (dynamic headers only)."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def __call__(self, n: int) -> int:
        end = self.pos + n
        if end > len(self.data) * 8:
            raise TokenError("dynamic block header is cut short")
        v = int.from_bytes(self.data[self.pos >> 3 : (end + 7) >> 3], "little") >> (self.pos & 7)
        self.pos = end
        return v & ((1 << n) - 1)


def _encoders(
    lit_lengths: list[int], dist_lengths: list[int]
) -> tuple[list[int], list[int], list[int], list[int], list[int], list[int]]:
    """Per literal, per match length and per distance symbol: (code bits, bit count)."""
    lc, dc = _canonical(lit_lengths), _canonical(dist_lengths)
    lits = [lc[s] for s in range(256)]
    lit_n = lit_lengths[:256]
    lens, lens_n = [0] * 259, [0] * 259
    for length in range(3, 259):
        sym, v, e = _LEN_SYM[length]
        if sym < len(lit_lengths) and lit_lengths[sym]:
            n = lit_lengths[sym]
            lens[length] = lc[sym] | v << n
            lens_n[length] = n + e
    dn = [dist_lengths[s] if s < len(dist_lengths) else 0 for s in range(30)]
    dcode = [dc[s] if dn[s] else 0 for s in range(30)]
    lits.append(lc[256])
    lit_n.append(lit_lengths[256])
    return lits, lit_n, lens, lens_n, dcode, dn


def encode_tokens(tokens: bytes | bytearray, chunk: int = 1 << 18) -> Iterator[bytes]:
    """The gzip file whose token string is ``tokens``, in pieces of about ``chunk`` bytes.

    Raises:
        TokenError: ``tokens`` is not a well-formed token string (a symbol
            without a code in its block, a bad header, trailing bytes).
    """
    t = tokens
    size = len(t)
    hlen, i = _varint(t, 0)
    if i + hlen > size:
        raise TokenError("token string is cut short")
    out = bytearray(t[i : i + hlen])
    i += hlen
    acc = nacc = 0  # pending output bits
    fixed = _encoders(_FIXED_LIT, _FIXED_DIST)
    dist_sym, dist_extra, dist_base = _DIST_SYM, _DIST_EXTRA, _DIST_BASE
    final = 0
    try:
        while not final:
            b = t[i]
            i += 1
            if b > 5:
                raise TokenError("bad block header in token string")
            final, btype = b & 1, b >> 1
            acc |= b << nacc
            nacc += 3
            if btype == 0:
                pad = (-nacc) & 7
                if t[i] >> pad:
                    raise TokenError("stored block padding does not fit")
                acc |= t[i] << nacc
                nacc += pad
                out += (acc & ((1 << nacc) - 1)).to_bytes(nacc >> 3, "little")
                acc = nacc = 0
                n = t[i + 1] | t[i + 2] << 8
                if i + 3 + n > size:
                    raise TokenError("stored block is cut short")
                out += t[i + 1 : i + 3]
                out += bytes((t[i + 1] ^ 0xFF, t[i + 2] ^ 0xFF))
                out += t[i + 3 : i + 3 + n]
                i += 3 + n
                continue
            if btype == 1:
                lits, lit_n, lens, lens_n, dcode, dn = fixed
            else:
                nbits, i = _varint(t, i)
                width = (nbits + 7) >> 3
                if i + width > size:
                    raise TokenError("token string is cut short")
                raw = int.from_bytes(t[i : i + width], "little")
                i += width
                if raw >> nbits:
                    raise TokenError("dynamic header has stray bits")
                bits = _Bits(raw, nbits)
                lit_lengths, dist_lengths = _read_code_lengths(bits)
                if bits.pos != nbits:
                    raise TokenError("dynamic header has bits left over")
                lits, lit_n, lens, lens_n, dcode, dn = _encoders(lit_lengths, dist_lengths)
                acc |= raw << nacc
                nacc += nbits
            while True:
                b = t[i]
                if b != ESC:
                    n = lit_n[b]
                    if not n:
                        raise TokenError("literal has no code in its block")
                    acc |= lits[b] << nacc
                    nacc += n
                    i += 1
                else:
                    c = t[i + 1]
                    if c < 0xFE:
                        length = c + 3
                        i += 2
                    elif c == 0xFE:
                        e = t[i + 2]
                        i += 3
                        if e < 2:
                            n = lit_n[255 + e]  # 0: literal 0xFF, 1: end of block
                            if not n:
                                raise TokenError("symbol has no code in its block")
                            acc |= lits[255 + e] << nacc
                            nacc += n
                            if e:
                                break
                            continue
                        if e > 3:
                            raise TokenError("bad token escape")
                        length = 255 + e
                    else:
                        raise TokenError("bad token escape")
                    d = (t[i] << 8 | t[i + 1]) + 1
                    i += 2
                    n = lens_n[length]
                    if not n or d > 32768:
                        raise TokenError("match has no code in its block")
                    acc |= lens[length] << nacc
                    nacc += n
                    s = dist_sym[d]
                    n = dn[s]
                    if not n:
                        raise TokenError("distance has no code in its block")
                    acc |= (dcode[s] | (d - dist_base[s]) << n) << nacc
                    nacc += n + dist_extra[s]
                if nacc >= 64:
                    out += (acc & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
                    acc >>= 64
                    nacc -= 64
                    if len(out) >= chunk:
                        yield bytes(out)
                        out.clear()
        pad = (-nacc) & 7
        if t[i] >> pad:
            raise TokenError("final padding does not fit")
        acc |= t[i] << nacc
        nacc += pad
        out += acc.to_bytes(nacc >> 3, "little")
        i += 1
    except IndexError as e:
        raise TokenError("token string is cut short") from e
    if i + 8 != size:
        raise TokenError("token string must end with the 8-byte gzip trailer")
    out += t[i:]
    yield bytes(out)


def reproducible_tokens(data: bytes, limit: int) -> bytes | None:
    """The token string of ``data`` when it re-encodes to exactly ``data``, else None."""
    try:
        tokens = tokens_of(data, limit)
        if b"".join(encode_tokens(tokens)) != data:
            return None
    except TokenError:
        return None
    return tokens
