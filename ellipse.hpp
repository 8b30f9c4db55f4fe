#pragma once
// Everything public in one include.
#include "autograd/grad_mode.hpp"
#include "autograd/gradcheck.hpp"
#include "autograd/ops.hpp"
#include "core/error.hpp"
#include "core/random.hpp"
#include "core/tensor.hpp"
#include "nn/layers.hpp"
#include "nn/module.hpp"
#include "nn/optim.hpp"
