#pragma once
// The per-row kernels of the decoder family, forward and hand-written backward: the two norms as
// one kernel, RoPE and the two MLP activations (attention is model/attention.hpp's, shared with the
// tiny LM).
// The dense products live in the model (Eigen GEMMs over all rows). Caller-owned row-major
// buffers; nothing here allocates.
#include <dftune/config.hpp>
#include <dftune/model/decoder/config.hpp>
#include <dftune/model/tiny_lm/layers.hpp>

#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

DFTUNE_NAMESPACE_BEGIN

namespace decoder {

// ---- norms: y = g ⊙ x̂ + b,  x̂ = (x − μ) r,  r = 1/sqrt(mean((x − μ)²) + eps) ------------------
// LayerNorm centres (μ = mean x) and has a bias; RMSNorm does not (μ = 0, b absent: nullptr).
template <class T>
void norm_forward(const T* x, const T* g, const T* b, bool center, T eps, T* y, T* mean, T* rstd, std::size_t d) {
  T mu = 0;
  if (center) {
    for (std::size_t j = 0; j < d; ++j) mu += x[j];
    mu /= static_cast<T>(d);
  }
  T var = 0;
  for (std::size_t j = 0; j < d; ++j) var += (x[j] - mu) * (x[j] - mu);
  const T r = T(1) / std::sqrt(var / static_cast<T>(d) + eps);
  *mean = mu;
  *rstd = r;
  for (std::size_t j = 0; j < d; ++j) y[j] = g[j] * (x[j] - mu) * r + (b ? b[j] : T(0));
}

// dx += r (ĝ − [center] mean(ĝ) − x̂ mean(ĝ ⊙ x̂)), ĝ = dy ⊙ g: the norm's Jacobian (the mean term
// is the centring's; RMSNorm has only the scale's).
template <class T>
void norm_backward_input(const T* dy, const T* x, const T* g, T mean, T rstd, bool center, T* dx, std::size_t d) {
  T m1 = 0, m2 = 0;
  for (std::size_t j = 0; j < d; ++j) {
    const T gh = dy[j] * g[j];
    m1 += gh;
    m2 += gh * (x[j] - mean) * rstd;
  }
  m1 = center ? m1 / static_cast<T>(d) : T(0);
  m2 /= static_cast<T>(d);
  for (std::size_t j = 0; j < d; ++j) dx[j] += rstd * (dy[j] * g[j] - m1 - (x[j] - mean) * rstd * m2);
}

// dg += Σ_rows dy ⊙ x̂, db += Σ_rows dy (db may be nullptr).
template <class T>
void norm_backward_params(const T* dy, const T* x, const T* mean, const T* rstd, T* dg, T* db, std::size_t rows, std::size_t d) {
  for (std::size_t i = 0; i < rows; ++i) {
    const T* dyi = dy + i * d;
    const T* xi = x + i * d;
    for (std::size_t j = 0; j < d; ++j) dg[j] += dyi[j] * (xi[j] - mean[i]) * rstd[i];
    if (db)
      for (std::size_t j = 0; j < d; ++j) db[j] += dyi[j];
  }
}

// ---- RoPE (the rotate-half convention of Hugging Face's Llama): pairs (i, i + half) of each head
// turn by the angle p·f_i; backward turns the gradient back by −p·f_i.
template <class T>
void rope_rotate(T* x, const T* cos, const T* sin, std::size_t half, bool inverse) {
  for (std::size_t i = 0; i < half; ++i) {
    const T a = x[i], b = x[i + half], c = cos[i], s = inverse ? -sin[i] : sin[i];
    x[i] = a * c - b * s;
    x[i + half] = b * c + a * s;
  }
}

/// cos and sin of p·f_i (rope_frequencies) for the positions p < len, [len, head_dim / 2] each:
/// computed in double, then rounded, so the table is exact to T whatever T is. One table for the
/// uncached forward and the cached decoder, so both rotate by the same values.
template <class Vec>  // std::vector of float or double, any allocator
void rope_table(const Config& c, std::size_t len, Vec& cos, Vec& sin) {
  using T = typename Vec::value_type;
  const auto f = rope_frequencies(c);
  const std::size_t half = f.size();
  cos.resize(len * half);
  sin.resize(len * half);
  for (std::size_t p = 0; p < len; ++p)
    for (std::size_t i = 0; i < half; ++i) {
      cos[p * half + i] = static_cast<T>(std::cos(static_cast<double>(p) * f[i]));
      sin[p * half + i] = static_cast<T>(std::sin(static_cast<double>(p) * f[i]));
    }
}

// ---- MLP activations: [rows, U] pre-activation → [rows, F] -----------------------------------
// gelu (tanh form, GPT-2's gelu_new): U = F.  SwiGLU: U = 2F, a = silu(gate) ⊙ up, with
// silu(g) = g σ(g) and silu'(g) = σ(g)(1 + g(1 − σ(g))).
template <class T>
void swiglu_forward(const T* gu, T* a, std::size_t F) {
  for (std::size_t j = 0; j < F; ++j) {
    const T g = gu[j];
    a[j] = g / (T(1) + std::exp(-g)) * gu[F + j];
  }
}

// dgu = ∂/∂[gate | up] of a = silu(gate) ⊙ up given da: [da ⊙ up ⊙ silu'(gate) | da ⊙ silu(gate)].
template <class T>
void swiglu_backward(const T* gu, const T* da, T* dgu, std::size_t F) {
  for (std::size_t j = 0; j < F; ++j) {
    const T g = gu[j], u = gu[F + j], sg = T(1) / (T(1) + std::exp(-g));
    dgu[j] = da[j] * u * sg * (T(1) + g * (T(1) - sg));
    dgu[F + j] = da[j] * g * sg;
  }
}

}  // namespace decoder

DFTUNE_NAMESPACE_END
