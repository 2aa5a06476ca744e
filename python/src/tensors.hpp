#pragma once
// Tensors in, spans out: the checks and conversions every binding of dftune_torch shares. The
// rules (also in the module's docstring):
// - non-contiguous tensors are copied to a contiguous one; tensors on another device are copied
//   to the CPU (the objectives' inputs are per-sequence, a few numbers each), and gradients go
//   back to the input's device;
// - a wrong dimension count or shape is a dftune::error in the library's format
//   ("argument: got …, expected …"); so is a wrong dtype family: log-probs must be floating
//   (float16, bfloat16, float32, float64; widened to float64 exactly), ids and lengths integer
//   (any integer dtype; widened to int64 exactly), never bool.
#include <dftune/error.hpp>

#include <torch/csrc/utils/tensor_dtypes.h>
#include <torch/extension.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace dftune_torch {

using dftune::detail::fail;

inline std::string shape_of(const at::Tensor& t) {
  std::ostringstream os;
  os << "shape [";
  for (std::int64_t d = 0; d < t.dim(); ++d) os << (d ? ", " : "") << t.size(d);
  os << ']';
  return os.str();
}

inline std::string shape_of(std::initializer_list<std::int64_t> dims) {
  std::ostringstream os;
  os << "shape [";
  bool first = true;
  for (std::int64_t d : dims) {
    os << (first ? "" : ", ") << d;
    first = false;
  }
  os << ']';
  return os.str();
}

// torch's Python name of a dtype: "torch.float32", as the user wrote it.
inline std::string dtype_name(at::ScalarType s) { return "torch." + torch::utils::getDtypeNames(s).first; }
inline std::string dtype_of(const at::Tensor& t) { return "dtype " + dtype_name(t.scalar_type()); }

inline void check_defined(std::string_view name, const at::Tensor& t) {
  if (!t.defined()) fail(name, "None", "a tensor");
}

inline void check_dim(std::string_view name, const at::Tensor& t, std::int64_t dim, std::string_view what) {
  check_defined(name, t);
  if (t.dim() != dim) fail(name, shape_of(t), what);
}

// t has exactly the shape `want` (e.g. ref_neg_logp the shape of neg_logp: a transposed [m, B]
// would pass a size check and pair the wrong log-probs).
inline void check_shape(std::string_view name, const at::Tensor& t, at::IntArrayRef want, std::string_view why) {
  check_defined(name, t);
  if (t.sizes() != want) {
    std::ostringstream os;
    os << "shape [";
    for (std::size_t d = 0; d < want.size(); ++d) os << (d ? ", " : "") << want[d];
    os << "] (" << why << ')';
    fail(name, shape_of(t), os.str());
  }
}

inline bool is_float_dtype(at::ScalarType s) {
  return s == at::kHalf || s == at::kBFloat16 || s == at::kFloat || s == at::kDouble;
}

inline bool is_integer_dtype(at::ScalarType s) { return at::isIntegralType(s, /*includeBool=*/false); }

// A floating tensor as a contiguous float64 CPU tensor (an exact widening).
inline at::Tensor as_f64(std::string_view name, const at::Tensor& t) {
  check_defined(name, t);
  if (!is_float_dtype(t.scalar_type()))
    fail(name, dtype_of(t), "a floating tensor (float16, bfloat16, float32 or float64)");
  return t.detach().to(at::kCPU, at::kDouble).contiguous();
}

// An integer tensor as a contiguous int64 CPU tensor (an exact widening).
inline at::Tensor as_i64(std::string_view name, const at::Tensor& t) {
  check_defined(name, t);
  if (!is_integer_dtype(t.scalar_type())) fail(name, dtype_of(t), "an integer tensor (int64, int32, ...)");
  return t.detach().to(at::kCPU, at::kLong).contiguous();
}

template <class T>
std::span<const T> span_of(const at::Tensor& t) {
  return {t.data_ptr<T>(), static_cast<std::size_t>(t.numel())};
}

inline std::span<const double> f64_span(const at::Tensor& t) { return span_of<double>(t); }
inline std::span<const std::int64_t> i64_span(const at::Tensor& t) { return span_of<std::int64_t>(t); }

// An optional tensor argument: empty span when None.
struct Optional {
  at::Tensor tensor;  // converted, or undefined
  template <class T>
  std::span<const T> span() const {
    return tensor.defined() ? span_of<T>(tensor) : std::span<const T>{};
  }
};

// `values` (computed in double) stored as `dtype`, or an error when the dtype cannot hold one of
// them: the bindings compute in float64 and return in the log-probs' dtype, where an extreme
// weight could overflow (the same check as the library's narrowing for float, dft.hpp).
inline at::Tensor narrow_to(std::string_view name, const std::vector<double>& values, at::ScalarType dtype) {
  at::Tensor out = at::tensor(at::ArrayRef<double>(values), at::kDouble).to(dtype);
  if (dtype != at::kDouble) {
    const at::Tensor finite = out.isfinite();
    if (!finite.all().item<bool>()) {
      const auto k = static_cast<std::size_t>(finite.logical_not().nonzero()[0][0].item<std::int64_t>());
      dftune::detail::fail_at(name, k, values[k],
                              "a value " + dtype_name(dtype) + " can hold (inputs too extreme for this precision)");
    }
  }
  return out;
}

inline at::Tensor narrow_scalar(std::string_view name, double value, at::ScalarType dtype) {
  at::Tensor out = at::scalar_tensor(value, at::kDouble).to(dtype);
  if (dtype != at::kDouble && !std::isfinite(out.item<double>()))
    fail(name, value, "a value " + dtype_name(dtype) + " can hold (inputs too extreme for this precision)");
  return out;
}

}  // namespace dftune_torch
