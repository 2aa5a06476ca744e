#pragma once
// Causal scaled dot-product attention of one query head, forward and hand-written backward, shared
// by the tiny LM and the decoder family, their uncached forwards and their cached decoders:
//   A_ij = softmax_j(q_i · k_j · scale) over the keys j <= i,   out_i = Σ_j A_ij v_j.
// Operands are strided rows (a head's columns inside a wider row): q, k and v rows have strides
// ld_q and ld_kv, out rows ld_out. One order of every sum, written once (below): the cached decoders
// get the uncached forward's values bit for bit because they call the same row_forward.
// Caller-owned buffers; nothing here allocates.
#include <dftune/config.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>

DFTUNE_NAMESPACE_BEGIN

namespace attention {

// The order of the sums, fixed here whatever the vector width, so that every caller gets the same
// bits from the same build: a dot product over e of kLanes or more elements keeps kLanes partial
// sums (lane e mod kLanes, in order of e), then adds them pairwise (lane l + w into lane l, w = kLanes/2, ..., 1); a sum over
// positions j (the weighted values) runs in order of j, kBlock output columns at a time in
// registers. Lanes are independent, so the compiler runs them as vectors of any width (the bits
// may still differ between builds that do and do not contract a·b + c into an FMA: -march).
inline constexpr std::size_t kLanes = 16;
// Output columns of a weighted sum of value rows held in registers at once.
inline constexpr std::size_t kBlock = 32;

// Σ_e x[e]·y[e] for e < n in the order above; fewer than kLanes elements (the tiny LM's heads)
// are summed in order of e: the lanes would hold one product each, and that order is as fast.
template <class T>
T dot(const T* x, const T* y, std::size_t n) {
  if (n < kLanes) {
    T s = 0;
    for (std::size_t e = 0; e < n; ++e) s += x[e] * y[e];
    return s;
  }
  T acc[kLanes] = {};
  std::size_t e = 0;
  for (; e + kLanes <= n; e += kLanes)
    for (std::size_t l = 0; l < kLanes; ++l) acc[l] += x[e + l] * y[e + l];
  for (std::size_t l = 0; e + l < n; ++l) acc[l] += x[e + l] * y[e + l];
  for (std::size_t w = kLanes / 2; w > 0; w /= 2)
    for (std::size_t l = 0; l < w; ++l) acc[l] += acc[l + w];
  return acc[0];
}

// o[e] = Σ_{j <= last} a[j]·v[j·ld + e] for e < width <= kBlock, in order of j (Full: width is
// kBlock, known to the compiler, which keeps acc in registers).
template <bool Full, class T>
void weighted_rows(const T* a, const T* v, std::size_t ld, std::size_t last, std::size_t width, T* o) {
  T acc[kBlock] = {};
  const std::size_t w = Full ? kBlock : width;
  for (std::size_t j = 0; j <= last; ++j)
    for (std::size_t e = 0; e < w; ++e) acc[e] += a[j] * v[j * ld + e];
  for (std::size_t e = 0; e < w; ++e) o[e] = acc[e];
}

// a[0..last] ← softmax(a[0..last]): exp(a_j − max) / Σ_j' exp(a_j' − max), the sum in order of j.
template <class T>
void softmax(T* a, std::size_t last) {
  T hi = -std::numeric_limits<T>::infinity();
  for (std::size_t j = 0; j <= last; ++j) hi = a[j] > hi ? a[j] : hi;
  T sum = 0;
  for (std::size_t j = 0; j <= last; ++j) sum += (a[j] = std::exp(a[j] - hi));
  for (std::size_t j = 0; j <= last; ++j) a[j] /= sum;
}

// One query row against the keys 0..last (inclusive): a[0..last] receives the attention weights
// softmax(q · k_j · scale), o[0..dh) the weighted sum of the values. k and v rows have stride ld_kv.
template <class T>
void row_forward(const T* q, const T* k, const T* v, std::size_t ld_kv, std::size_t last, std::size_t dh, T scale, T* a, T* o) {
  for (std::size_t j = 0; j <= last; ++j) a[j] = dot(q, k + j * ld_kv, dh) * scale;
  softmax(a, last);
  std::size_t e = 0;
  for (; e + kBlock <= dh; e += kBlock) weighted_rows<true>(a, v + e, ld_kv, last, kBlock, o + e);
  if (e < dh) weighted_rows<false>(a, v + e, ld_kv, last, dh - e, o + e);
}

// row_forward for the query heads h0 <= h < h1 of one row at once: query head h (q + h·dh) reads
// key/value head h / group (k + (h / group)·dh and v likewise, rows of stride ld_kv) and writes
// o + h·dh; a holds h1 − h0 rows of last + 1 weights. The same sums in the same order as
// row_forward, so each head's output is row_forward's bit for bit; the loops go position by
// position instead, reading one position's keys (then values) of every head together: a cached
// decoder's cache row, in order (a head at a time it strides through the cache, at ≈ 60 % of the
// bandwidth of an in-order read here).
template <class T>
void heads_forward(const T* q, const T* k, const T* v, std::size_t ld_kv, std::size_t last, std::size_t dh, std::size_t h0, std::size_t h1,
                   std::size_t group, T scale, T* a, T* o) {
  const std::size_t L = last + 1;
  for (std::size_t j = 0; j < L; ++j)
    for (std::size_t h = h0; h < h1; ++h) a[(h - h0) * L + j] = dot(q + h * dh, k + j * ld_kv + h / group * dh, dh) * scale;
  for (std::size_t h = h0; h < h1; ++h) softmax(a + (h - h0) * L, last);
  std::fill(o + h0 * dh, o + h1 * dh, T(0));
  for (std::size_t j = 0; j < L; ++j)
    for (std::size_t h = h0; h < h1; ++h) {
      const T w = a[(h - h0) * L + j];
      const T* __restrict vj = v + j * ld_kv + h / group * dh;
      T* __restrict oh = o + h * dh;
      for (std::size_t e = 0; e < dh; ++e) oh[e] += w * vj[e];
    }
}

// Causal attention of one sequence of L rows: q, k, v rows of stride ld, out rows of stride
// ld_out; the weights are kept in probs [L, L] (row i holds A_i0..A_ii; the rest unused).
template <class T>
void forward(const T* q, const T* k, const T* v, std::size_t ld, T* probs, T* out, std::size_t ld_out, std::size_t L, std::size_t dh,
             T scale) {
  for (std::size_t i = 0; i < L; ++i) row_forward(q + i * ld, k, v, ld, i, dh, scale, probs + i * L, out + i * ld_out);
}

// Backward of forward(): accumulates into dq, dk, dv (the layout of q, k, v) given dout,
//   dA_ij = dout_i · v_j,  dv_j += Σ_i A_ij dout_i,  dS_ij = A_ij (dA_ij − Σ_j' A_ij' dA_ij'),
//   dq_i += scale Σ_j dS_ij k_j,  dk_j += scale Σ_i dS_ij q_i.   dA: scratch of L values.
template <class T>
void backward(const T* q, const T* k, const T* v, std::size_t ld, const T* probs, const T* dout, std::size_t ld_out, T* dq, T* dk,
              T* dv, T* dA, std::size_t L, std::size_t dh, T scale) {
  for (std::size_t i = 0; i < L; ++i) {
    const T* a = probs + i * L;
    const T* go = dout + i * ld_out;
    T a_dA = 0;  // Σ_j' A_ij' dA_ij'
    for (std::size_t j = 0; j <= i; ++j) {
      const T s = dot(go, v + j * ld, dh);
      dA[j] = s;
      a_dA += a[j] * s;
      for (std::size_t e = 0; e < dh; ++e) dv[j * ld + e] += a[j] * go[e];
    }
    for (std::size_t j = 0; j <= i; ++j) {
      const T ds = a[j] * (dA[j] - a_dA) * scale;
      for (std::size_t e = 0; e < dh; ++e) {
        dq[i * ld + e] += ds * k[j * ld + e];
        dk[j * ld + e] += ds * q[i * ld + e];
      }
    }
  }
}

}  // namespace attention

DFTUNE_NAMESPACE_END
