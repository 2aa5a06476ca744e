#pragma once
// Causal scaled dot-product attention of one query head, forward and hand-written backward, shared
// by the tiny LM and the decoder family, their uncached forwards and their cached decoders:
//   A_ij = softmax_j(q_i · k_j · scale) over the keys j <= i,   out_i = Σ_j A_ij v_j.
// Operands are strided rows (a head's columns inside a wider row): q, k and v rows have strides
// ld_q and ld_kv, out rows ld_out. One order of every sum, written once: the cached decoders get
// the uncached forward's values bit for bit because they call the same row_forward.
// Caller-owned buffers; nothing here allocates.
#include <dftune/config.hpp>

#include <cmath>
#include <cstddef>
#include <limits>

DFTUNE_NAMESPACE_BEGIN

namespace attention {

// One query row against the keys 0..last (inclusive): a[0..last] receives the attention weights
// softmax(q · k_j · scale), o[0..dh) the weighted sum of the values. k and v rows have stride ld_kv.
template <class T>
void row_forward(const T* q, const T* k, const T* v, std::size_t ld_kv, std::size_t last, std::size_t dh, T scale, T* a, T* o) {
  T hi = -std::numeric_limits<T>::infinity();
  for (std::size_t j = 0; j <= last; ++j) {
    T s = 0;
    for (std::size_t e = 0; e < dh; ++e) s += q[e] * k[j * ld_kv + e];
    a[j] = s * scale;
    hi = a[j] > hi ? a[j] : hi;
  }
  T sum = 0;
  for (std::size_t j = 0; j <= last; ++j) sum += (a[j] = std::exp(a[j] - hi));
  for (std::size_t j = 0; j <= last; ++j) a[j] /= sum;
  for (std::size_t e = 0; e < dh; ++e) o[e] = 0;
  for (std::size_t j = 0; j <= last; ++j)
    for (std::size_t e = 0; e < dh; ++e) o[e] += a[j] * v[j * ld_kv + e];
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
    T dot = 0;
    for (std::size_t j = 0; j <= i; ++j) {
      T s = 0;
      for (std::size_t e = 0; e < dh; ++e) s += go[e] * v[j * ld + e];
      dA[j] = s;
      dot += a[j] * s;
      for (std::size_t e = 0; e < dh; ++e) dv[j * ld + e] += a[j] * go[e];
    }
    for (std::size_t j = 0; j <= i; ++j) {
      const T ds = a[j] * (dA[j] - dot) * scale;
      for (std::size_t e = 0; e < dh; ++e) {
        dq[i * ld + e] += ds * k[j * ld + e];
        dk[j * ld + e] += ds * q[i * ld + e];
      }
    }
  }
}

}  // namespace attention

DFTUNE_NAMESPACE_END
