/* One ITCH message from wire bytes to its packed struct with SSSE3 byte shuffles: the
 * decoder's conversion on CPUs that have SSSE3 (chosen at run time, see decode.pyx:
 * shuffle_conversion), where the portable form needs about sixty scalar instructions.
 *
 * Every byte of the struct comes from a wire byte at most 9 before or 5 after its own
 * position (the timestamp widens by 2 bytes; swapping an 8-byte integer moves a byte by up
 * to 7), so each 16-byte piece of the struct is one or two shuffles of two 16-byte windows
 * of the message, at fixed offsets: the per-type work is all in the masks, which decode.pyx
 * derives from the struct layouts (a mask byte with its top bit set writes a zero).
 *
 * Reads SHUFFLE_READ bytes at msg and writes SHUFFLE_WRITE bytes at out. */

#ifndef FEEDHANDLER_SHUFFLE_CONVERT_H
#define FEEDHANDLER_SHUFFLE_CONVERT_H

#include <stdint.h>

#define SHUFFLE_MASKS 7
#define SHUFFLE_READ 54
#define SHUFFLE_WRITE 64

/* Window offsets in the message, and which windows each mask shuffles (in mask order):
 * struct bytes 0-15 from windows 0 and 1, 16-31 from 2 and 3, 32-47 from 3 and 4, 48-63
 * from 4. decode.pyx reads these to build the masks. */
static const uint8_t SHUFFLE_WINDOW_AT[5] = {0, 16, 6, 22, 38};
static const uint8_t SHUFFLE_MASK_WINDOW[SHUFFLE_MASKS] = {0, 1, 2, 3, 3, 4, 4};
static const uint8_t SHUFFLE_MASK_PIECE[SHUFFLE_MASKS] = {0, 0, 1, 1, 2, 2, 3};  /* 16-byte piece of out */

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

#else


static void shuffle_convert(const uint8_t *msg, const uint8_t *masks, uint8_t *out)
{
    (void) msg; (void) masks; (void) out;
}

static int shuffle_convert_supported(void)
{
    return 0;
}

#endif
#endif
