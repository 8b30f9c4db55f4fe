#pragma once
// Data-parallel training: every rank holds the whole model, computes gradients on its own part of the global
// batch, and the ranks average those gradients before the optimizer's step, so every rank takes the same step.
// The start must be identical too: the same parameters (broadcast_parameters) and the same configuration and
// data on every rank (check_same_on_all_ranks).
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "../nn/module.hpp"
#include "communicator.hpp"

namespace ellipse::dist {

// Every rank's parameters become root's, in place (handles held elsewhere follow).
void broadcast_parameters(const nn::Module& model, Communicator& comm, int root = 0);
// Replaces each parameter's .grad with its mean over the ranks, in one all-reduce of one flat buffer. A
// parameter without a gradient counts as zero, and has the mean as its gradient afterwards, on every rank.
// Call it after backward and before clipping, so the clipped norm is the global batch's.
void average_gradients(const std::vector<Tensor>& parameters, Communicator& comm);
// Throws, on every rank, an error naming `what`, the ranks that disagree and this rank's `value`, unless `value`
// is the same on every rank. For a run's configuration, parameter shapes, world size and data.
void check_same_on_all_ranks(Communicator& comm, std::string_view what, const std::string& value);
// A 64-bit FNV-1a hash of `values`' bytes, for check_same_on_all_ranks on data too large to compare as text.
std::uint64_t fingerprint(std::string_view bytes);
std::uint64_t fingerprint(const std::vector<std::int64_t>& values);
// The parameters' names, shapes and dtypes as one string: what check_same_on_all_ranks compares for a model.
std::string parameter_signature(const nn::Module& model);

}  // namespace ellipse::dist
