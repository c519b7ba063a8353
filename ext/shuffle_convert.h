/* One ITCH message from wire bytes to its packed struct with byte shuffles: the decoder's
 * conversions on x86 CPUs, chosen at run time (decode.pyx: _conversion), where the portable
 * form needs about sixty scalar instructions.
 *
 * With SSSE3 (shuffle_convert): every byte of the struct comes from a wire byte at most 9
 * before or 5 after its own position (the timestamp widens by 2 bytes; swapping an 8-byte
 * integer moves a byte by up to 7), so each 16-byte piece of the struct is one or two
 * shuffles of two 16-byte windows of the message, at fixed offsets: the per-type work is all
 * in the masks, which decode.pyx derives from the struct layouts (a mask byte with its top
 * bit set writes a zero). Reads SHUFFLE_READ bytes at msg and writes SHUFFLE_WRITE at out.
 *
 * With AVX-512 VBMI (permute_convert, below): one 64-byte permute does the whole struct and
 * the field checks run on the same register; permute_fill is pass two's loop around it for
 * the messages that need nothing else. Only compiled for those CPUs through target
 * attributes, so the module stays portable. */

#ifndef FEEDHANDLER_SHUFFLE_CONVERT_H
#define FEEDHANDLER_SHUFFLE_CONVERT_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

#define SHUFFLE_MASKS 7
#define SHUFFLE_READ 54
#define SHUFFLE_WRITE 64

/* Window offsets in the message, and which windows each mask shuffles (in mask order):
 * struct bytes 0-15 from windows 0 and 1, 16-31 from 2 and 3, 32-47 from 3 and 4, 48-63
 * from 4. decode.pyx reads these to build the masks. */
static const uint8_t SHUFFLE_WINDOW_AT[5] = {0, 16, 6, 22, 38};
static const uint8_t SHUFFLE_MASK_WINDOW[SHUFFLE_MASKS] = {0, 1, 2, 3, 3, 4, 4};
static const uint8_t SHUFFLE_MASK_PIECE[SHUFFLE_MASKS] = {0, 0, 1, 1, 2, 2, 3};  /* 16-byte piece of out */

#define PERMUTE_READ 64
#define PERMUTE_WRITE 64
#define PERMUTE_TIMESTAMP_LANE 7    /* 8-byte lane of permute_convert's vector: the check's copy */

/* permute_convert's per-type tables, derived from the struct layouts in decode.pyx, and the
 * two numbers of the type's MessageSpec that permute_fill needs. */
typedef struct {
    uint8_t index[64];      /* wire byte of each vector byte (struct bytes, then the copy) */
    uint64_t keep;          /* vector bytes taken from the wire; the others are zeros */
    uint64_t stock;         /* vector bytes that must be printable ASCII (the stock field) */
    uint64_t side;          /* vector byte that must be 'B' or 'S' (the buy/sell indicator) */
    uint32_t expected_length;   /* MessageSpec's: the wire length, or no u16 (unknown type) */
    uint32_t struct_size;
} __attribute__((aligned(64))) PermuteSpec;

/* Where pass two writes the next row of one slot (a message type, by first appearance). */
typedef struct {
    uint8_t *row;           /* where the slot's next row goes */
    uint64_t *sequences_end;    /* the end of its sequence numbers (if numbered): the next
                                 * goes `left` before it */
    size_t left;                /* rows left of the count pass one made */
} SlotCursor;

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>


__attribute__((target("ssse3")))
static void shuffle_convert(const uint8_t *msg, const uint8_t *masks, uint8_t *out)
{
    const __m128i *m = (const __m128i *) masks;
    __m128i w0 = _mm_loadu_si128((const __m128i *) (msg + 0));
    __m128i w1 = _mm_loadu_si128((const __m128i *) (msg + 16));
    __m128i w2 = _mm_loadu_si128((const __m128i *) (msg + 6));
    __m128i w3 = _mm_loadu_si128((const __m128i *) (msg + 22));
    __m128i w4 = _mm_loadu_si128((const __m128i *) (msg + 38));
    _mm_storeu_si128((__m128i *) (out + 0), _mm_or_si128(
        _mm_shuffle_epi8(w0, _mm_loadu_si128(m + 0)), _mm_shuffle_epi8(w1, _mm_loadu_si128(m + 1))));
    _mm_storeu_si128((__m128i *) (out + 16), _mm_or_si128(
        _mm_shuffle_epi8(w2, _mm_loadu_si128(m + 2)), _mm_shuffle_epi8(w3, _mm_loadu_si128(m + 3))));
    _mm_storeu_si128((__m128i *) (out + 32), _mm_or_si128(
        _mm_shuffle_epi8(w3, _mm_loadu_si128(m + 4)), _mm_shuffle_epi8(w4, _mm_loadu_si128(m + 5))));
    _mm_storeu_si128((__m128i *) (out + 48), _mm_shuffle_epi8(w4, _mm_loadu_si128(m + 6)));
}

static int shuffle_convert_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("ssse3");
}


/* The same conversion with one AVX-512 VBMI byte permute (vpermb picks each of 64 bytes from
 * any of 64), which also checks the fields in the same registers: the permute writes a second
 * copy of the timestamp in the vector's last 8-byte lane (past every struct: 56 bytes or
 * fewer, the copy lands in the row slack or the next row, both rewritten), and the stock and
 * buy/sell bytes are compared where the row holds them. Returns nonzero if a check fails;
 * decode.pyx then asks its scalar field_fault which one. Reads PERMUTE_READ bytes at msg and
 * writes PERMUTE_WRITE bytes at out. */
__attribute__((target("avx512f,avx512bw,avx512vbmi")))
static uint32_t permute_convert(const uint8_t *msg, const PermuteSpec *spec,
                                uint64_t timestamp_limit, uint8_t *out)
{
    __m512i row = _mm512_maskz_permutexvar_epi8(spec->keep, _mm512_load_si512(spec->index),
                                                _mm512_loadu_si512(msg));
    __mmask64 unprintable, not_b, bad_side, late;
    _mm512_storeu_si512(out, row);
    unprintable = _mm512_mask_cmpgt_epu8_mask(
        spec->stock, _mm512_sub_epi8(row, _mm512_set1_epi8(0x20)), _mm512_set1_epi8(0x7e - 0x20));
    not_b = _mm512_mask_cmpneq_epu8_mask(spec->side, row, _mm512_set1_epi8('B'));
    bad_side = _mm512_mask_cmpneq_epu8_mask(not_b, row, _mm512_set1_epi8('S'));
    /* Late if the copy minus the limit is not negative (both are below 2**48): the sign of
     * the lane's top byte, tested as a byte so that all three results are 64-bit masks. */
    late = _mm512_mask_cmpge_epi8_mask(
        (__mmask64) 1 << (8 * PERMUTE_TIMESTAMP_LANE + 7),
        _mm512_sub_epi64(row, _mm512_set1_epi64((long long) timestamp_limit)),
        _mm512_setzero_si512());
    return !_kortestz_mask64_u8(_kor_mask64(unprintable, bad_side), late);
}

/* decode.pyx's fill_segment for the messages it fills without a second look, in one loop with
 * permute_convert inlined (its constants in registers): from *position while each message is
 * framed as pass one found it (its type's length, inside `limit`, a type pass one counted
 * with rows left), whole inside the caller's bytes (`end`: nothing to stage) and passes its
 * field checks. Stops before the first that is not, which fill_segment then takes on.
 * Numbers each converted message from `sequence` on (writes the numbers if `numbered`);
 * returns how many it converted. */
__attribute__((target("avx512f,avx512bw,avx512vbmi")))
static size_t permute_fill(const uint8_t *block, size_t *position, size_t limit, size_t end,
                           const PermuteSpec *specs, const uint8_t *slot_of, SlotCursor *at,
                           uint64_t sequence, int numbered, uint64_t timestamp_limit)
{
    /* From `stop` on, a message has no length prefix and type byte before `limit`, or its
     * conversion would read past `end`: one compare per message stands for both tests. */
    size_t last_framed = limit >= 3 ? limit - 3 : 0;
    size_t last_read = end >= 2 + PERMUTE_READ ? end - 2 - PERMUTE_READ : 0;
    size_t stop = (last_framed < last_read ? last_framed : last_read) + 1;
    size_t pos = *position, length;
    uint64_t next = sequence;
    const PermuteSpec *spec;
    unsigned slot;
    uint16_t prefix;
    if (limit < 3 || end < 2 + PERMUTE_READ)
        return 0;
    while (pos < stop) {
        memcpy(&prefix, block + pos, 2);
        length = __builtin_bswap16(prefix);
        spec = &specs[block[pos + 2]];
        slot = slot_of[block[pos + 2]];
        if (length != spec->expected_length || pos + 2 + length > limit || slot == 0
                || at[slot - 1].left == 0)
            break;
        slot -= 1;
        /* Ask for the slot's lines a kilobyte ahead: a big block's rows go to memory no
         * cache holds yet, and the row stores otherwise wait for each line (a write hint,
         * PREFETCHW, measured no better). A prefetch past the arena's end is harmless:
         * prefetches never fault. */
        __builtin_prefetch(at[slot].row + 1024, 1, 3);
        if (numbered)
            __builtin_prefetch(at[slot].sequences_end - at[slot].left + 128, 1, 3);
        if (permute_convert(block + pos + 2, spec, timestamp_limit, at[slot].row))
            break;      /* a field check failed: fill_segment converts it again, says which */
        if (numbered)
            at[slot].sequences_end[-(ptrdiff_t) at[slot].left] = next;
        next++;
        at[slot].left--;
        at[slot].row += spec->struct_size;
        pos += 2 + length;
    }
    *position = pos;
    return next - sequence;
}

static int permute_convert_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vbmi");
}

#else


static void shuffle_convert(const uint8_t *msg, const uint8_t *masks, uint8_t *out)
{
    (void) msg; (void) masks; (void) out;
}

static int shuffle_convert_supported(void)
{
    return 0;
}


static uint32_t permute_convert(const uint8_t *msg, const PermuteSpec *spec,
                                uint64_t timestamp_limit, uint8_t *out)
{
    (void) msg; (void) spec; (void) timestamp_limit; (void) out;
    return 0;
}

static size_t permute_fill(const uint8_t *block, size_t *position, size_t limit, size_t end,
                           const PermuteSpec *specs, const uint8_t *slot_of, SlotCursor *at,
                           uint64_t sequence, int numbered, uint64_t timestamp_limit)
{
    (void) block; (void) position; (void) limit; (void) end; (void) specs; (void) slot_of;
    (void) at; (void) sequence; (void) numbered; (void) timestamp_limit;
    return 0;
}

static int permute_convert_supported(void)
{
    return 0;
}

#endif
#endif
