#pragma once
// GELU (tanh form) over arrays, the way the models call it: float runs cpu/tanh.hpp's vector tanh
// at the CPU's widest ISA; double runs the scalar functions of layers.hpp (std::tanh), which stay
// the oracle for float too. Each float kernel is lane-wise and pads its tail (cpu/tanh.hpp), so
// an element's result does not depend on the array it came in: the forward split over threads,
// the KV decoder's tiles and the backward all see the same bits for the same u.
#include <dftune/config.hpp>
#include <dftune/cpu/tanh.hpp>
#include <dftune/model/tiny_lm/layers.hpp>

#include <cstddef>
#include <type_traits>

DFTUNE_NAMESPACE_BEGIN

namespace detail {

using cpu::kernel::vfloat;

inline constexpr float gelu_c = 0.7978845608028654f, gelu_k = 0.044715f;  // sqrt(2/π), GPT-2's cubic term

// t = tanh(c (u + k u³)), the same expression as gelu_tanh.
template <std::size_t Bytes>
DFTUNE_ALWAYS_INLINE void gelu_t(const vfloat<Bytes>& u, vfloat<Bytes>& t) {
  t = gelu_c * (u + gelu_k * u * u * u);
  cpu::kernel::tanh_lanes<Bytes>(t);
}

// in: u; out: t, gelu(u, t).
struct GeluKeep {
  static constexpr std::size_t inputs = 1, outputs = 2;
  template <std::size_t Bytes>
  static DFTUNE_ALWAYS_INLINE void lanes(const vfloat<Bytes>* in, vfloat<Bytes>* out) {
    gelu_t<Bytes>(in[0], out[0]);
    out[1] = 0.5f * in[0] * (1.0f + out[0]);
  }
};

// in: u; out: gelu(u), the same bits as GeluKeep's.
struct GeluValue {
  static constexpr std::size_t inputs = 1, outputs = 1;
  template <std::size_t Bytes>
  static DFTUNE_ALWAYS_INLINE void lanes(const vfloat<Bytes>* in, vfloat<Bytes>* out) {
    vfloat<Bytes> t;
    gelu_t<Bytes>(in[0], t);
    out[0] = 0.5f * in[0] * (1.0f + t);
  }
};

// in: u, g; out: g · gelu_grad(u, t), t recomputed with GeluKeep's bits.
struct GeluGrad {
  static constexpr std::size_t inputs = 2, outputs = 1;
  template <std::size_t Bytes>
  static DFTUNE_ALWAYS_INLINE void lanes(const vfloat<Bytes>* in, vfloat<Bytes>* out) {
    const vfloat<Bytes>& u = in[0];
    vfloat<Bytes> t;
    gelu_t<Bytes>(u, t);
    out[0] = in[1] * (0.5f * (1.0f + t) + 0.5f * u * (1.0f - t * t) * gelu_c * (1.0f + 3.0f * gelu_k * u * u));
  }
};

}  // namespace detail

namespace tiny_lm {

/// t[i] = gelu_tanh(u[i]) and a[i] = gelu(u[i], t[i]) for i < n: the forward that keeps t for
/// gelu_grad(u, t). Float: vectorised (cpu/tanh.hpp, within 2 ulp of the exact tanh); double:
/// std::tanh.
template <class T>
void gelu_forward(const T* u, T* t, T* a, std::size_t n) {
  if constexpr (std::is_same_v<T, float>) {
    const float* in[1] = {u};
    float* out[2] = {t, a};
    cpu::kernel::map<detail::GeluKeep>(in, out, n);
  } else {
    for (std::size_t i = 0; i < n; ++i) {
      t[i] = gelu_tanh(u[i]);
      a[i] = gelu(u[i], t[i]);
    }
  }
}

/// a[i] = gelu(u[i]) for i < n, the same bits as gelu_forward's a; a may be u.
template <class T>
void gelu_values(const T* u, T* a, std::size_t n) {
  if constexpr (std::is_same_v<T, float>) {
    const float* in[1] = {u};
    float* out[1] = {a};
    cpu::kernel::map<detail::GeluValue>(in, out, n);
  } else {
    for (std::size_t i = 0; i < n; ++i) a[i] = gelu(u[i]);
  }
}

/// du[i] = g[i] · d gelu(u[i]) / du, with the tanh gelu_forward / gelu_values used for u; du may
/// be g.
template <class T>
void gelu_backward(const T* u, const T* g, T* du, std::size_t n) {
  if constexpr (std::is_same_v<T, float>) {
    const float* in[2] = {u, g};
    float* out[1] = {du};
    cpu::kernel::map<detail::GeluGrad>(in, out, n);
  } else {
    for (std::size_t i = 0; i < n; ++i) du[i] = g[i] * gelu_grad(u[i]);
  }
}

}  // namespace tiny_lm

DFTUNE_NAMESPACE_END
