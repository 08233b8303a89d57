// COVER views on the GPU: decoded NV12 / P016 frames -> normalised view tensors.
//
// Two kernels, one launch per view (all clips and frames of the view in one grid):
//   cover_resize_view     semantic and aesthetic views: bilinear resize of whole frames
//   cover_fragments_view  technical view: fragments cut from the raw (or upsampled) frames
// Each output pixel converts the YUV samples it needs to 8-bit RGB, resamples, normalises and
// writes the three channels straight into the inference input buffer (float32 or float16).
//
// The maths is the CPU path's (cover_engine.runtime: colour.py, geometry.py, resize.py,
// views.py), evaluated in float32 with the same operations in the same order; every operation
// is an explicit round-to-nearest intrinsic (__fadd_rn, __fmul_rn, __fmaf_rn where the CPU
// path fuses, ...), which the compiler never contracts or reorders, so results are
// bit-identical to the numpy path for identical inputs (numpy's fma is float64-then-float32,
// which can differ from a true fma only when its second rounding meets an exact float32 tie).
// All index math is done on the host: the kernels only read tables (see each kernel).
//
// Colour (colour.py): the caller passes the 8 float32 constants of the stream's conversion,
//   yuv[8] = {y_offset, c_offset, y_scale, c_scale, r_v, g_u, g_v, b_u}
// computed by colour.yuv_to_rgb_coefficients(matrix, full_range, bit_depth) for the matrix and
// range the stream signals: BT.601 / BT.709 / BT.2020 / SMPTE 240M / FCC, limited or full range,
// 8 to 16 bits (BT.601 limited range when the stream signals nothing). With Y, U, V the code
// values (P016 samples shifted right by 16 - bit_depth):
//   y = (Y - y_offset) * y_scale;  u = (U - c_offset) * c_scale;  v = (V - c_offset) * c_scale
//   R = y + r_v * v;  G = (y - g_u * u) - g_v * v;  B = y + b_u * u
//   each rounded half-to-even and clamped to 0..255.
// Chroma is 4:2:0 at the nearest sample: pixel (r, c) reads chroma (r >> 1, c >> 1).
// That is the "exact" conversion (sws_path = -1). The default, "decord" (sws_path 0, 1, 2 =
// colour.SWS_PATHS "mmx", "table", "full"), is colour.sws_levels in integers: sws[19] are
// colour.SWS_CONSTANTS, sws_rows[height] the chroma row (>> 1) and whether the next one is
// averaged in (bit 0), sws_cols[width][3] the first chroma column and two 14-bit weights; all
// made on the host by colour.sws_conversion for the frame size, so no decision is taken here.
//
// Frames: luma[f] and chroma[f] are the device addresses of frame f's Y plane and interleaved
// UV plane (pitches in bytes); sample_bytes is 1 (NV12) or 2 (P016, little-endian), sample_shift
// the right shift giving code values (0 for NV12, 16 - bit_depth for P016).
//
// Output: element (clip b, channel c, frame t, row y, column x) is written at
//   out + b * stride_clip + c * stride_c + t * stride_t + y * out_w + x      (in elements)
// so NCTHW (the engines' (B, 3, T, H, W)) and other layouts work; out_half selects float16.
// Normalisation: (level - mean[c]) / std[c] with norm[6] = {mean rgb, std rgb}.
//
// No includes and extern "C" entry points: a C++ host compiles this file as it is with nvcc,
// or at run time with NVRTC, and finds the kernels by name.

struct CoverFrames {
    const unsigned long long* luma;
    const unsigned long long* chroma;
    int luma_pitch;
    int chroma_pitch;
    int height;
    int width;
    int sample_bytes;
    int sample_shift;
};

struct CoverColour {
    const float* yuv;     // exact: 8 float32 constants
    int path;             // -1 exact; 0 mmx, 1 table, 2 full (decord)
    const int* sws;       // decord: colour.SWS_CONSTANTS
    const int* rows;      // decord: per output row, chroma row << 1 | average-next
    const int* cols;      // decord: per output column, first chroma column, weight 0, weight 1
};

__device__ __forceinline__ float cover_level(float value) {
    // round half to even, clamp to 0..255 (numpy: clip(rint(v), 0, 255))
    return fminf(fmaxf(rintf(value), 0.0f), 255.0f);
}

__device__ __forceinline__ int cover_sample(const unsigned char* row, int i, int bytes, int shift) {
    if (bytes == 1) return row[i];
    return ((const unsigned short*)row)[i] >> shift;
}

// 15-bit chroma sample k (0 U, 1 V) of a chroma row at output column taps ct (swscale's
// horizontal filter: sum of samples times 14-bit weights, >> (bits - 1), at most 32767).
__device__ __forceinline__ int cover_chroma15(const unsigned char* row, const int* ct, int k,
                                              int bytes, int shift, int bits) {
    int acc = cover_sample(row, ct[0] * 2 + k, bytes, shift) * ct[1];
    if (ct[2] != 0) acc += cover_sample(row, (ct[0] + 1) * 2 + k, bytes, shift) * ct[2];
    return min(acc >> (bits - 1), 32767);
}

__device__ __forceinline__ int cover_clamp(int value, int top) {
    return min(max(value, 0), top);
}

// decord's levels of pixel (r, c) of frame f (colour.sws_levels).
__device__ void cover_rgb_decord(const CoverFrames& fr, const CoverColour& cc, int f, int r, int c,
                                 float rgb[3]) {
    const int* k = cc.sws;
    int rt = cc.rows[r];
    const int* ct = cc.cols + 3 * c;
    int bits = fr.sample_bytes == 1 ? 8 : 16 - fr.sample_shift;
    const unsigned char* luma = (const unsigned char*)fr.luma[f] + (long long)r * fr.luma_pitch;
    const unsigned char* chroma0 =
        (const unsigned char*)fr.chroma[f] + (long long)(rt >> 1) * fr.chroma_pitch;
    int Y = cover_sample(luma, c, fr.sample_bytes, fr.sample_shift);
    if (cc.path == 0) {  // mmx: 16-bit fixed point, nearest chroma
        int U = (cover_sample(chroma0, ct[0] * 2, fr.sample_bytes, fr.sample_shift) << 3) - 1024;
        int V = (cover_sample(chroma0, ct[0] * 2 + 1, fr.sample_bytes, fr.sample_shift) << 3) -
                1024;
        int y = (((Y << 3) - k[1]) * k[0]) >> 16;
        rgb[0] = (float)cover_clamp(y + ((V * k[2]) >> 16), 255);
        rgb[1] = (float)cover_clamp(y + ((U * k[4]) >> 16) + ((V * k[5]) >> 16), 255);
        rgb[2] = (float)cover_clamp(y + ((U * k[3]) >> 16), 255);
        return;
    }
    const unsigned char* chroma1 = chroma0 + ((rt & 1) ? fr.chroma_pitch : 0);
    int U0 = cover_chroma15(chroma0, ct, 0, fr.sample_bytes, fr.sample_shift, bits);
    int V0 = cover_chroma15(chroma0, ct, 1, fr.sample_bytes, fr.sample_shift, bits);
    int U1 = cover_chroma15(chroma1, ct, 0, fr.sample_bytes, fr.sample_shift, bits);
    int V1 = cover_chroma15(chroma1, ct, 1, fr.sample_bytes, fr.sample_shift, bits);
    int Y15 = (Y << 14) >> (bits - 1);
    if (cc.path == 1) {  // table: 8-bit values through ff_yuv2rgb_c_init_tables' arithmetic
        int y8 = ((Y15 + 64) >> 7) + k[8];
        int U = cover_clamp((rt & 1) ? (U0 + U1 + 128) >> 8 : (U0 + 64) >> 7, 255);
        int V = cover_clamp((rt & 1) ? (V0 + V1 + 128) >> 8 : (V0 + 64) >> 7, 255);
        int dr = ((V * k[9]) >> 16) - (k[9] >> 9);
        int dgu = ((U * k[11]) >> 16) - (k[11] >> 9);
        int dgv = ((V * k[12]) >> 16) - (k[12] >> 9);
        int db = ((U * k[10]) >> 16) - (k[10] >> 9);
        rgb[0] = (float)cover_clamp(((y8 + dr) * k[6] + k[7]) >> 16, 255);
        rgb[1] = (float)cover_clamp(((y8 + dgu + dgv) * k[6] + k[7]) >> 16, 255);
        rgb[2] = (float)cover_clamp(((y8 + db) * k[6] + k[7]) >> 16, 255);
        return;
    }
    // full: 32-bit arithmetic of yuv2rgb_write_full, wrapping as swscale's does
    int U = (rt & 1) ? (U0 + U1 - (128 << 8)) * 2 : (U0 - (128 << 7)) * 4;
    int V = (rt & 1) ? (V0 + V1 - (128 << 8)) * 2 : (V0 - (128 << 7)) * 4;
    unsigned y = (unsigned)((Y15 * 4 - k[14]) * k[13] + (1 << 21));
    int R = (int)(y + (unsigned)(V * k[15]));
    int G = (int)(y + (unsigned)(V * k[16]) + (unsigned)(U * k[17]));
    int B = (int)(y + (unsigned)(U * k[18]));
    rgb[0] = (float)(cover_clamp(R, (1 << 30) - 1) >> 22);
    rgb[1] = (float)(cover_clamp(G, (1 << 30) - 1) >> 22);
    rgb[2] = (float)(cover_clamp(B, (1 << 30) - 1) >> 22);
}

// 8-bit RGB levels (as floats) of pixel (r, c) of frame f.
__device__ void cover_rgb(const CoverFrames& fr, const CoverColour& cc, int f, int r, int c,
                          float rgb[3]) {
    // the host tables keep (r, c) inside the frame; clamping only guards against bad tables
    r = min(max(r, 0), fr.height - 1);
    c = min(max(c, 0), fr.width - 1);
    if (cc.path >= 0) {
        cover_rgb_decord(fr, cc, f, r, c, rgb);
        return;
    }
    const float* yuv = cc.yuv;
    const unsigned char* luma = (const unsigned char*)fr.luma[f] + (long long)r * fr.luma_pitch;
    const unsigned char* chroma =
        (const unsigned char*)fr.chroma[f] + (long long)(r >> 1) * fr.chroma_pitch;
    float Y = (float)cover_sample(luma, c, fr.sample_bytes, fr.sample_shift);
    float U = (float)cover_sample(chroma, (c >> 1) * 2, fr.sample_bytes, fr.sample_shift);
    float V = (float)cover_sample(chroma, (c >> 1) * 2 + 1, fr.sample_bytes, fr.sample_shift);
    float y = __fmul_rn(__fsub_rn(Y, yuv[0]), yuv[2]);
    float u = __fmul_rn(__fsub_rn(U, yuv[1]), yuv[3]);
    float v = __fmul_rn(__fsub_rn(V, yuv[1]), yuv[3]);
    rgb[0] = cover_level(__fadd_rn(y, __fmul_rn(yuv[4], v)));
    rgb[1] = cover_level(__fsub_rn(__fsub_rn(y, __fmul_rn(yuv[5], u)), __fmul_rn(yuv[6], v)));
    rgb[2] = cover_level(__fadd_rn(y, __fmul_rn(yuv[7], u)));
}

// One bilinear sample as resize.py (torch's CPU kernel: width first, each step one fused
// multiply-add): top = fma(a, wx0, b * wx1); bottom = fma(c, wx0, d * wx1);
// out = fma(top, wy0, bottom * wy1), with w*0 = 1 - w*1. prescale divides the 8-bit levels by
// 255 first (upstream's small-frame upsampling works on x / 255).
__device__ void cover_bilinear(const CoverFrames& fr, const CoverColour& yuv, int f,
                               int r0, int r1, float wy1, int c0, int c1, float wx1,
                               bool prescale, float out[3]) {
    float wy0 = __fsub_rn(1.0f, wy1);
    float wx0 = __fsub_rn(1.0f, wx1);
    float p00[3], p01[3], p10[3], p11[3];
    cover_rgb(fr, yuv, f, r0, c0, p00);
    cover_rgb(fr, yuv, f, r0, c1, p01);
    cover_rgb(fr, yuv, f, r1, c0, p10);
    cover_rgb(fr, yuv, f, r1, c1, p11);
    for (int k = 0; k < 3; ++k) {
        float a = p00[k], b = p01[k], c = p10[k], d = p11[k];
        if (prescale) {
            a = __fdiv_rn(a, 255.0f);
            b = __fdiv_rn(b, 255.0f);
            c = __fdiv_rn(c, 255.0f);
            d = __fdiv_rn(d, 255.0f);
        }
        float top = __fmaf_rn(a, wx0, __fmul_rn(b, wx1));
        float bottom = __fmaf_rn(c, wx0, __fmul_rn(d, wx1));
        out[k] = __fmaf_rn(top, wy0, __fmul_rn(bottom, wy1));
    }
}

__device__ __forceinline__ void cover_store(void* out, int out_half, long long index, float value) {
    if (out_half) {
        unsigned short h;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(value));
        ((unsigned short*)out)[index] = h;
    } else {
        ((float*)out)[index] = value;
    }
}

__device__ __forceinline__ void cover_write(void* out, int out_half, long long base,
                                            long long stride_c, const float level[3],
                                            const float* __restrict__ norm) {
    for (int k = 0; k < 3; ++k)
        cover_store(out, out_half, base + k * stride_c,
                    __fdiv_rn(__fsub_rn(level[k], norm[k]), norm[3 + k]));
}

// Resize view. Grid (ceil(out_w / bx), ceil(out_h / by), clips * frames), any block (bx, by).
// Output frame k (clip k / frames, view frame k % frames) reads decoded frame frame_of[k].
// rows0/rows1/wrow (out_h) and cols0/cols1/wcol (out_w) are geometry.resize_table's taps.
// Levels are rounded half-to-even to 8 bits after resampling, as torchvision 0.14's Resize.
extern "C" __global__ void cover_resize_view(
    const unsigned long long* __restrict__ luma, const unsigned long long* __restrict__ chroma,
    int luma_pitch, int chroma_pitch, int height, int width, int sample_bytes, int sample_shift,
    const float* __restrict__ yuv, int sws_path, const int* __restrict__ sws,
    const int* __restrict__ sws_rows, const int* __restrict__ sws_cols,
    const int* __restrict__ frame_of, int frames,
    const int* __restrict__ rows0, const int* __restrict__ rows1, const float* __restrict__ wrow,
    const int* __restrict__ cols0, const int* __restrict__ cols1, const float* __restrict__ wcol,
    int out_h, int out_w, const float* __restrict__ norm, void* out, int out_half,
    long long stride_clip, long long stride_c, long long stride_t) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    int k = blockIdx.z;
    if (x >= out_w || y >= out_h) return;
    CoverFrames fr = {luma, chroma, luma_pitch, chroma_pitch, height, width, sample_bytes,
                      sample_shift};
    CoverColour colour = {yuv, sws_path, sws, sws_rows, sws_cols};
    float value[3];
    cover_bilinear(fr, colour, frame_of[k], rows0[y], rows1[y], wrow[y], cols0[x], cols1[x],
                   wcol[x], false, value);
    for (int c = 0; c < 3; ++c) value[c] = cover_level(value[c]);
    long long base = (k / frames) * stride_clip + (k % frames) * stride_t +
                     (long long)y * out_w + x;
    cover_write(out, out_half, base, stride_c, value, norm);
}

// Fragments view. Grid (ceil(out_w / bx), ceil(out_h / by), clips * frames), any block (bx, by).
// origins (clips, frames / aligned, 2, fragments_h, fragments_w): top-left (row, column) of each
// fsize_h x fsize_w crop (views.plan_views), shared by each run of `aligned` view frames. Output
// (i * fsize_h + a, j * fsize_w + b) reads source pixel (origin_y + a, origin_x + b).
// upsample != 0: the source is the frame upsampled by upstream's F.interpolate(scale_factor)
// (frames smaller than the grid), given by its taps up_rows* (frame_h) and up_cols* (frame_w)
// (geometry.FragmentGrid.tables()): interpolate levels / 255, * 255, clamp, truncate to 8 bits.
extern "C" __global__ void cover_fragments_view(
    const unsigned long long* __restrict__ luma, const unsigned long long* __restrict__ chroma,
    int luma_pitch, int chroma_pitch, int height, int width, int sample_bytes, int sample_shift,
    const float* __restrict__ yuv, int sws_path, const int* __restrict__ sws,
    const int* __restrict__ sws_rows, const int* __restrict__ sws_cols,
    const int* __restrict__ frame_of, int frames,
    const int* __restrict__ origins, int aligned, int fragments_h, int fragments_w, int fsize_h,
    int fsize_w, int upsample, const int* __restrict__ up_rows0, const int* __restrict__ up_rows1,
    const float* __restrict__ up_wrow, const int* __restrict__ up_cols0,
    const int* __restrict__ up_cols1, const float* __restrict__ up_wcol,
    const float* __restrict__ norm, void* out, int out_half, long long stride_clip,
    long long stride_c, long long stride_t) {
    int out_w = fragments_w * fsize_w;
    int out_h = fragments_h * fsize_h;
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    int k = blockIdx.z;
    if (x >= out_w || y >= out_h) return;
    int clip = k / frames, t = k % frames;
    int i = y / fsize_h, j = x / fsize_w;
    int runs = frames / aligned;
    const int* o =
        origins + ((long long)(clip * runs + t / aligned) * 2) * fragments_h * fragments_w;
    int r = o[i * fragments_w + j] + y % fsize_h;
    int c = o[fragments_h * fragments_w + i * fragments_w + j] + x % fsize_w;
    CoverFrames fr = {luma, chroma, luma_pitch, chroma_pitch, height, width, sample_bytes,
                      sample_shift};
    CoverColour colour = {yuv, sws_path, sws, sws_rows, sws_cols};
    float value[3];
    if (upsample) {
        cover_bilinear(fr, colour, frame_of[k], up_rows0[r], up_rows1[r], up_wrow[r], up_cols0[c],
                       up_cols1[c], up_wcol[c], true, value);
        for (int ch = 0; ch < 3; ++ch)  // (x * 255).type_as(uint8): clamp, then truncate
            value[ch] = truncf(fminf(fmaxf(__fmul_rn(value[ch], 255.0f), 0.0f), 255.0f));
    } else {
        cover_rgb(fr, colour, frame_of[k], r, c, value);
    }
    long long base = clip * stride_clip + t * stride_t + (long long)y * out_w + x;
    cover_write(out, out_half, base, stride_c, value, norm);
}
