#pragma once
// The per-row kernels of the tiny causal LM, forward and hand-written backward: layer norm,
// GELU and causal multi-head attention of one sequence (the shared kernel of model/attention.hpp). The dense products live in the model
// (one Eigen GEMM over all rows of a batch); these are the parts that are not a GEMM.
// All buffers are caller-owned and row-major; nothing here allocates.
#include <dftune/config.hpp>
#include <dftune/model/attention.hpp>

#include <cmath>
#include <cstddef>
#include <limits>

DFTUNE_NAMESPACE_BEGIN

namespace tiny_lm {

// ---- layer norm: y = g ⊙ x̂ + b,  x̂ = (x − μ) · r,  r = 1/sqrt(var + eps) -----------------------
// y[rows, d] = the layer norm above of x[rows, d], gain g[d], bias b[d]; writes each row's mean and r
// (rstd) for layer_norm_backward.
template <class T>
void layer_norm_forward(const T* x, const T* g, const T* b, T* y, T* mean, T* rstd, std::size_t rows,
                        std::size_t d, T eps = T(1e-5)) {
  for (std::size_t i = 0; i < rows; ++i) {
    const T* xi = x + i * d;
    T mu = 0;
    for (std::size_t j = 0; j < d; ++j) mu += xi[j];
    mu /= static_cast<T>(d);
    T var = 0;
    for (std::size_t j = 0; j < d; ++j) var += (xi[j] - mu) * (xi[j] - mu);
    const T r = T(1) / std::sqrt(var / static_cast<T>(d) + eps);
    mean[i] = mu;
    rstd[i] = r;
    T* yi = y + i * d;
    for (std::size_t j = 0; j < d; ++j) yi[j] = g[j] * (xi[j] - mu) * r + b[j];
  }
}

// dx += r · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂)) with ĝ = dy ⊙ g  (the layer-norm Jacobian);
// dg += Σ_rows dy ⊙ x̂, db += Σ_rows dy.
template <class T>
void layer_norm_backward(const T* dy, const T* x, const T* g, const T* mean, const T* rstd, T* dx, T* dg, T* db,
                         std::size_t rows, std::size_t d) {
  for (std::size_t i = 0; i < rows; ++i) {
    const T* dyi = dy + i * d;
    const T* xi = x + i * d;
    T m1 = 0, m2 = 0;
    for (std::size_t j = 0; j < d; ++j) {
      const T xh = (xi[j] - mean[i]) * rstd[i];
      const T gh = dyi[j] * g[j];
      m1 += gh;
      m2 += gh * xh;
      dg[j] += dyi[j] * xh;
      db[j] += dyi[j];
    }
    m1 /= static_cast<T>(d);
    m2 /= static_cast<T>(d);
    T* dxi = dx + i * d;
    for (std::size_t j = 0; j < d; ++j) {
      const T xh = (xi[j] - mean[i]) * rstd[i];
      dxi[j] += rstd[i] * (dyi[j] * g[j] - m1 - xh * m2);
    }
  }
}

// ---- GELU, tanh form: gelu(u) = u/2 · (1 + tanh(c (u + 0.044715 u³))), c = sqrt(2/π) ----------
// The tanh is most of the MLP's cost at small widths (std::tanh is a libm call per value), so the
// forward keeps t = gelu_tanh(u) beside u and the backward takes it back: gelu_grad(u, t) is the
// same expression as gelu_grad(u), hence the same bits, without a second tanh per value.
template <class T>
T gelu_tanh(T u) {
  const T c = T(0.7978845608028654);
  return std::tanh(c * (u + T(0.044715) * u * u * u));
}

// gelu(u) given t = gelu_tanh(u).
template <class T>
T gelu(T u, T t) {
  return T(0.5) * u * (T(1) + t);
}

// gelu(u), the tanh form above (GPT-2's).
template <class T>
T gelu(T u) {
  return gelu(u, gelu_tanh(u));
}

// d gelu(u) / du given t = gelu_tanh(u).
template <class T>
T gelu_grad(T u, T t) {
  const T c = T(0.7978845608028654);
  return T(0.5) * (T(1) + t) + T(0.5) * u * (T(1) - t * t) * c * (T(1) + T(3) * T(0.044715) * u * u);
}

// d gelu(u) / du, of the same tanh form.
template <class T>
T gelu_grad(T u) {
  return gelu_grad(u, gelu_tanh(u));
}

// ---- causal attention of one sequence of L rows, one head (model/attention.hpp) ---------------
// qkv is [L, 3d] (q | k | v, head h at columns h·dh of each third); out and dout are [L, d].
// A = softmax(q kᵀ / sqrt(dh)) over keys j <= i, stored in probs [L, L] (upper triangle unused).
template <class T>
void attention_forward(const T* qkv, T* probs, T* out, std::size_t L, std::size_t d, std::size_t h, std::size_t dh) {
  const T* q = qkv + h * dh;
  attention::forward(q, q + d, q + 2 * d, 3 * d, probs, out + h * dh, d, L, dh, T(1) / std::sqrt(static_cast<T>(dh)));
}

// Given dout, accumulates into dqkv (same layout as qkv); dA is scratch of L values.
template <class T>
void attention_backward(const T* qkv, const T* probs, const T* dout, T* dqkv, T* dA, std::size_t L, std::size_t d, std::size_t h,
                        std::size_t dh) {
  const std::size_t o = h * dh;
  attention::backward(qkv + o, qkv + d + o, qkv + 2 * d + o, 3 * d, probs, dout + o, d, dqkv + o, dqkv + d + o, dqkv + 2 * d + o, dA, L,
                      dh, T(1) / std::sqrt(static_cast<T>(dh)));
}

}  // namespace tiny_lm

DFTUNE_NAMESPACE_END
