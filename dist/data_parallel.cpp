#include "dist/data_parallel.hpp"

#include <cstdint>

#include <fmt/format.h>

#include "autograd/grad_mode.hpp"
#include "autograd/ops.hpp"
#include "core/error.hpp"

namespace ellipse::dist {

void broadcast_parameters(const nn::Module& model, Communicator& comm, int root) {
  NoGradGuard no_grad;
  for (const auto& [name, p] : model.named_parameters()) {
    if (p.is_contiguous()) {
      comm.broadcast(p.detach(), root);
    } else {  // the collectives take dense memory
      const Tensor dense = clone(p.detach());
      comm.broadcast(dense, root);
      p.detach().copy_(dense);
    }
  }
}

void average_gradients(const std::vector<Tensor>& parameters, Communicator& comm) {
  if (parameters.empty() || comm.size() == 1) return;
  NoGradGuard no_grad;
  const Tensor& first = parameters.front();
  std::vector<Tensor> flat;
  for (const Tensor& p : parameters) {
    ELLIPSE_CHECK(p.device() == first.device() && p.dtype() == first.dtype(), "average_gradients: the parameters "
                  "must share one device and dtype, got {} {} and {} {}", first.device().str(),
                  dtype_name(first.dtype()), p.device().str(), dtype_name(p.dtype()));
    flat.push_back(p.grad().defined() ? reshape(p.grad(), {-1}) : zeros({p.numel()}, p.dtype(), p.device()));
  }
  const Tensor buffer = concat(flat, 0);
  comm.all_reduce(buffer, Reduction::average);
  std::int64_t offset = 0;
  for (const Tensor& p : parameters) {
    const Tensor mean = view(narrow(buffer, 0, offset, p.numel()), p.shape());
    if (p.grad().defined()) {
      p.grad().copy_(mean);
    } else {
      p.impl()->grad = clone(mean).impl();
    }
    offset += p.numel();
  }
}

std::uint64_t fingerprint(std::string_view bytes) {
  std::uint64_t hash = 14695981039346656037ull;
  for (unsigned char c : bytes) hash = (hash ^ c) * 1099511628211ull;
  return hash;
}

std::uint64_t fingerprint(const std::vector<std::int64_t>& values) {
  return fingerprint(std::string_view(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(std::int64_t)));
}

void check_same_on_all_ranks(Communicator& comm, std::string_view what, const std::string& value) {
  // Equal strings give equal hashes on every rank; the chance that different ones collide is nil.
  const std::uint64_t hash = fingerprint(value);
  const auto hashes = comm.all_gather(from_vector(std::vector<std::int64_t>{static_cast<std::int64_t>(hash)}, {1}))
                          .to_vector<std::int64_t>();
  for (std::size_t r = 1; r < hashes.size(); ++r)
    ELLIPSE_CHECK(hashes[r] == hashes[0], "{} differs across ranks: rank 0 and rank {} disagree (of {}); this is rank "
                  "{}, with {}", what, r, hashes.size(), comm.rank(), value);
}

std::string parameter_signature(const nn::Module& model) {
  std::string signature;
  for (const auto& [name, p] : model.named_parameters())
    signature += fmt::format("{} {} {}; ", name, to_string(p.shape()), dtype_name(p.dtype()));
  return signature;
}

}  // namespace ellipse::dist
