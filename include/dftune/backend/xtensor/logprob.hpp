#pragma once
// The token log-prob reductions on xtensor (xt::xtensor, xt::xarray and their views), with the
// semantics, checks and dispatch of dftune::logprob (read logprob/generic.hpp): this header only
// turns xtensor expressions into the spans of a TokenLogits and back.
//
//   xt::xtensor<float, 2> logits = ...;                        // [N, V]
//   auto seq  = dftune::backend::xtensor::forward(logits, targets, offsets);          // [S]
//   auto grad = dftune::backend::xtensor::backward(logits, targets, offsets, d_seq);  // [N, V]
//
// Inputs are evaluated once: a container or a strided view whose memory is already row-major and
// contiguous (xt::xtensor, a row-major xt::xarray, xt::view(x, xt::range(a, b), xt::all()), ...)
// is read in place; anything else (an expression, a transposed or column-sliced view, another
// value type) is evaluated into one row-major temporary first. No expression escapes the API:
// outputs are plain xt::xtensor containers.
#include <dftune/checked_size.hpp>
#include <dftune/config.hpp>
#include <dftune/error.hpp>
#include <dftune/logprob/logprob.hpp>
#include <dftune/logprob/token_logits.hpp>

#include <xtensor/xexpression.hpp>
#include <xtensor/xoperation.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xutils.hpp>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

DFTUNE_NAMESPACE_BEGIN

namespace backend::xtensor {

// Row-major contiguous storage of an xtensor expression of `Dim` dimensions, as T: the
// expression's own memory when it already has that layout and type, else one evaluated copy.
template <class T, std::size_t Dim>
class Contiguous {
  static_assert(Dim == 1 || Dim == 2);

 public:
  // Reads `expr` (an error names `argument` when it has another number of dimensions).
  template <class E>
  Contiguous(std::string_view argument, const ::xt::xexpression<E>& expr) {
    const E& e = expr.derived_cast();
    if (e.dimension() != Dim)
      dftune::detail::fail(argument, std::to_string(e.dimension()) + " dimensions",
                   Dim == 1 ? std::string("a 1-d expression") : std::string("a 2-d [N, V] expression"));
    for (std::size_t d = 0; d < Dim; ++d) shape_[d] = static_cast<std::size_t>(e.shape()[d]);
    // The element count, before anything is read or evaluated: an expression's shape is not backed
    // by memory (xt::broadcast), and a wrapped product would size the copy below too small.
    if constexpr (Dim == 1) size_ = shape_[0];
    else size_ = dftune::detail::checked_product(argument, shape_[0], shape_[1]);
    using V = std::decay_t<typename E::value_type>;
    if constexpr (::xt::has_data_interface<E>::value && std::is_same_v<V, T>) {
      if (row_major(e)) {
        data_ = std::span<const T>(e.data() + e.data_offset(), size());
        in_place_ = true;
        return;
      }
    }
    own_ = ::xt::xtensor<T, Dim>(::xt::cast<T>(e));  // the one evaluation
    data_ = std::span<const T>(own_.data(), own_.size());
  }
  Contiguous(const Contiguous&) = delete;
  Contiguous& operator=(const Contiguous&) = delete;

  // The elements, row-major.
  std::span<const T> span() const { return data_; }
  // The size of dimension d.
  std::size_t extent(std::size_t d) const { return shape_[d]; }
  // The element count (overflow-checked).
  std::size_t size() const { return size_; }
  // Whether the expression was read in place (no copy).
  bool in_place() const { return in_place_; }

 private:
  template <class E>
  bool row_major(const E& e) const {
    // Strides of extent-1 dimensions do not matter (xtensor sets them to 0).
    std::size_t expect = 1;
    for (std::size_t d = Dim; d-- > 0;) {
      if (shape_[d] > 1 && static_cast<std::size_t>(e.strides()[d]) != expect) return false;
      if (e.strides()[d] < 0) return false;
      expect *= shape_[d];
    }
    return true;
  }

  std::size_t shape_[Dim] = {};
  std::size_t size_ = 0;
  ::xt::xtensor<T, Dim> own_;
  std::span<const T> data_;
  bool in_place_ = false;
};

// An expression's element type.
template <class E>
using value_t = std::decay_t<typename E::value_type>;

namespace detail {

template <class T, class EL, class ET, class EO, class EW>
void with_token_logits(const ::xt::xexpression<EL>& logits, const ::xt::xexpression<ET>& targets,
                       const ::xt::xexpression<EO>& offsets, const ::xt::xexpression<EW>* weights, auto&& f) {
  using C = logprob::compute_t<T>;
  const Contiguous<T, 2> z("logits", logits);
  const Contiguous<token_t, 1> y("targets", targets);
  const Contiguous<std::int64_t, 1> o("offsets", offsets);
  if (weights) {
    const Contiguous<C, 1> w("weights", *weights);
    f(logprob::TokenLogits<T>{.logits = z.span(), .vocab = z.extent(1), .targets = y.span(), .weights = w.span(),
                              .offsets = o.span()},
      z.extent(0));
  } else {
    f(logprob::TokenLogits<T>{.logits = z.span(), .vocab = z.extent(1), .targets = y.span(), .weights = {},
                              .offsets = o.span()},
      z.extent(0));
  }
}

}  // namespace detail

// seq_logp [S] = Σ_{n in s} w_n · log softmax(z_n)[y_n]; logits [N, V], targets [N], offsets [S + 1],
// weights [N] (optional: every token weight 1). Throws dftune::error as logprob::forward does.
template <class EL, class ET, class EO, class EW>
::xt::xtensor<logprob::compute_t<value_t<EL>>, 1> forward(const ::xt::xexpression<EL>& logits,
                                                          const ::xt::xexpression<ET>& targets,
                                                          const ::xt::xexpression<EO>& offsets,
                                                          const ::xt::xexpression<EW>& weights) {
  using T = value_t<EL>;
  using C = logprob::compute_t<T>;
  ::xt::xtensor<C, 1> out;
  detail::with_token_logits<T>(logits, targets, offsets, &weights, [&](const logprob::TokenLogits<T>& in, std::size_t) {
    ::xt::xtensor<C, 1> seq = ::xt::xtensor<C, 1>::from_shape({in.sequences()});
    logprob::forward(in, std::span<C>(seq.data(), seq.size()));
    out = std::move(seq);
  });
  return out;
}

// forward without weights: every token weight 1. Example (two sequences of 2 and 1 tokens, V = 3):
//
//     xt::xtensor<float, 2> z = {{0, 1, 2}, {1, 1, 1}, {2, 0, 0}};
//     xt::xtensor<dftune::token_t, 1> y = {2, 0, 1};
//     xt::xtensor<std::int64_t, 1> off = {0, 2, 3};
//     auto seq = dftune::backend::xtensor::forward(z, y, off);   // [log π(seq 0), log π(seq 1)]
template <class EL, class ET, class EO>
::xt::xtensor<logprob::compute_t<value_t<EL>>, 1> forward(const ::xt::xexpression<EL>& logits,
                                                          const ::xt::xexpression<ET>& targets,
                                                          const ::xt::xexpression<EO>& offsets) {
  using T = value_t<EL>;
  using C = logprob::compute_t<T>;
  ::xt::xtensor<C, 1> out;
  detail::with_token_logits<T, EL, ET, EO, ::xt::xtensor<C, 1>>(
      logits, targets, offsets, nullptr, [&](const logprob::TokenLogits<T>& in, std::size_t) {
        ::xt::xtensor<C, 1> seq = ::xt::xtensor<C, 1>::from_shape({in.sequences()});
        logprob::forward(in, std::span<C>(seq.data(), seq.size()));
        out = std::move(seq);
      });
  return out;
}

// grad [N, V] = d_seq[s] · w_n · (onehot(y_n) − softmax(z_n)); d_seq [S]. Throws as logprob::backward.
template <class EL, class ET, class EO, class ED, class EW>
::xt::xtensor<value_t<EL>, 2> backward(const ::xt::xexpression<EL>& logits, const ::xt::xexpression<ET>& targets,
                                       const ::xt::xexpression<EO>& offsets, const ::xt::xexpression<ED>& d_seq,
                                       const ::xt::xexpression<EW>& weights) {
  using T = value_t<EL>;
  using C = logprob::compute_t<T>;
  const Contiguous<C, 1> d("d_seq", d_seq);
  ::xt::xtensor<T, 2> out;
  detail::with_token_logits<T>(logits, targets, offsets, &weights, [&](const logprob::TokenLogits<T>& in, std::size_t n) {
    ::xt::xtensor<T, 2> g = ::xt::xtensor<T, 2>::from_shape({n, in.vocab});
    logprob::backward(in, d.span(), std::span<T>(g.data(), g.size()));
    out = std::move(g);
  });
  return out;
}

// backward without weights: every token weight 1.
template <class EL, class ET, class EO, class ED>
::xt::xtensor<value_t<EL>, 2> backward(const ::xt::xexpression<EL>& logits, const ::xt::xexpression<ET>& targets,
                                       const ::xt::xexpression<EO>& offsets, const ::xt::xexpression<ED>& d_seq) {
  using T = value_t<EL>;
  using C = logprob::compute_t<T>;
  const Contiguous<C, 1> d("d_seq", d_seq);
  ::xt::xtensor<T, 2> out;
  detail::with_token_logits<T, EL, ET, EO, ::xt::xtensor<C, 1>>(
      logits, targets, offsets, nullptr, [&](const logprob::TokenLogits<T>& in, std::size_t n) {
        ::xt::xtensor<T, 2> g = ::xt::xtensor<T, 2>::from_shape({n, in.vocab});
        logprob::backward(in, d.span(), std::span<T>(g.data(), g.size()));
        out = std::move(g);
      });
  return out;
}

}  // namespace backend::xtensor

DFTUNE_NAMESPACE_END
