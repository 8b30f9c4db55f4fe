// ellipse.nn: modules and optimizers (with Python subclasses through trampolines), the basic layers, gradient
// clipping, the learning-rate schedule and parameter checkpoints.
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>
#include <nanobind/trampoline.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "models/checkpoint.hpp"
#include "nn/analysis.hpp"
#include "nn/attention.hpp"
#include "nn/block.hpp"
#include "nn/layers.hpp"
#include "nn/module.hpp"
#include "nn/optim.hpp"

namespace ellipse::python {
namespace {

using namespace nb::literals;
using Release = nb::call_guard<nb::gil_scoped_release>;

// A layer whose forward is a Python method: what `class MyLayer(ellipse.nn.Module)` builds. The library calls
// forward through the C++ virtual, so such a layer works wherever an nn::Layer does (Sequential, the models).
class PyLayer : public nn::Layer {
 public:
  NB_TRAMPOLINE(nn::Layer);
  // The Python method's output goes through the forward hooks, as every forward of the library does.
  Tensor forward(const Tensor& x) override {
    Tensor out;
    {
      nb::gil_scoped_acquire gil;  // the library may call it from code that released the GIL
      out = python_forward(x);
    }
    return hooked(out);
  }
  using nn::Module::register_module;
  using nn::Module::register_parameter;

 private:
  Tensor python_forward(const Tensor& x) { NB_OVERRIDE_PURE_NAME("forward", forward, x); }
};

// The name of an object's class as its author wrote it ("Linear", "MyAttention"), for messages.
std::string class_name(nb::handle object) { return nb::cast<std::string>(object.type().attr("__name__")); }

// A probe's tensor, None when nothing was recorded.
std::optional<Tensor> recorded(const Tensor& tensor) {
  return tensor.defined() ? std::optional<Tensor>(tensor) : std::nullopt;
}

// An attention kind written in Python: `class MyAttention(ellipse.nn.AttentionLayer)` whose forward(self, x, causal,
// v_prev) returns out [B, N, d] or (out, v). Registered under a name (register_attention), it goes into the GPT,
// the ViT, their trainers, checkpoints and the study's probes, which call it through the C++ virtual. It takes no
// KVCache: sampling recomputes the window for each token.
class PyAttentionLayer : public nn::AttentionLayer {
 public:
  NB_TRAMPOLINE(nn::AttentionLayer);
  nn::AttentionOutput forward(const Tensor& x, bool causal, const Tensor& v_prev, nn::KVCache* cache) override {
    nn::AttentionOutput output;
    {
      nb::gil_scoped_acquire gil;  // the library calls it from code that released the GIL
      const nb::handle self = nb::find(static_cast<nn::AttentionLayer*>(this));
      ELLIPSE_CHECK(cache == nullptr, "{}: an attention layer written in Python takes no KVCache", class_name(self));
      // The base class's forward calls this one: without a forward of the subclass's own it would recurse.
      ELLIPSE_CHECK(!nb::getattr(self.type(), "forward").is(nb::getattr(nb::type<nn::AttentionLayer>(), "forward")),
                    "{}: a subclass of ellipse.nn.AttentionLayer defines forward(self, x, causal, v_prev)",
                    class_name(self));
      output = from_python(self.attr("forward")(x, causal, recorded(v_prev)), x, self);
    }
    output.out = hooked(output.out);
    return output;
  }
  bool decodes_incrementally() const override { return false; }

  using nn::AttentionLayer::record_attention;
  using nn::AttentionLayer::record_metric;
  using nn::Module::register_module;
  using nn::Module::register_parameter;

 private:
  // out, or (out, v) with v a Tensor or None; out must have x's shape, as the block adds it to x. The messages
  // name self's class (computed only for them: this runs in every training step).
  static nn::AttentionOutput from_python(const nb::object& result, const Tensor& x, nb::handle self) {
    nn::AttentionOutput output;
    nb::object out = result;
    if (nb::isinstance<nb::tuple>(result) && nb::len(result) == 2) {
      out = result[0];
      if (!result[1].is_none()) {
        ELLIPSE_CHECK(nb::isinstance<Tensor>(result[1]), "{}.forward: expected v to be a Tensor or None, got {}",
                      class_name(self), class_name(result[1]));
        output.v = nb::cast<Tensor>(result[1]);
      }
    }
    ELLIPSE_CHECK(nb::isinstance<Tensor>(out), "{}.forward: expected a Tensor out or a tuple (out, v), got {}",
                  class_name(self), class_name(out));
    output.out = nb::cast<Tensor>(out);
    ELLIPSE_CHECK(output.out.shape() == x.shape(), "{}.forward: expected out of the input's shape {}, got {}",
                  class_name(self), to_string(x.shape()), to_string(output.out.shape()));
    return output;
  }
};

// An optimizer written in Python: `class MyOptimizer(ellipse.nn.Optimizer)` whose step(self) updates the
// parameters and buffers of self.slots() in place. The buffers are the library's, so save_train_state and
// load_train_state store them under the subclass's buffer names and record its name as the kind.
class PyOptimizer : public nn::Optimizer {
 public:
  NB_TRAMPOLINE(nn::Optimizer);
  PyOptimizer(std::string name, std::vector<nn::ParamGroup> groups, double lr, std::vector<std::string> buffer_names,
              const std::function<double(const Tensor&)>& default_weight_decay)
      : nn::Optimizer(std::move(name), std::move(groups), lr, std::move(buffer_names), default_weight_decay) {}
  void step() override {
    nb::gil_scoped_acquire gil;  // the library may call it from code that released the GIL
    python_step();
  }

  using nn::Optimizer::begin_step;
  using nn::Optimizer::gradient;
  using nn::Optimizer::Slot;
  using nn::Optimizer::slots;

 private:
  void python_step() { NB_OVERRIDE_PURE_NAME("step", step); }
};

// A Python optimizer's default weight decay: a number for every parameter, or a function of the parameter
// (called here, once per parameter whose group sets none).
std::function<double(const Tensor&)> default_weight_decay(const nb::object& weight_decay, const std::string& name) {
  if (PyCallable_Check(weight_decay.ptr())) {
    return [weight_decay, name](const Tensor& parameter) {
      const nb::object decay = weight_decay(parameter);
      ELLIPSE_CHECK(nb::isinstance<nb::float_>(decay) || nb::isinstance<nb::int_>(decay),
                    "{}: weight_decay(parameter) must return a number, got {}", name, class_name(decay));
      return nb::cast<double>(decay);
    };
  }
  ELLIPSE_CHECK(nb::isinstance<nb::float_>(weight_decay) || nb::isinstance<nb::int_>(weight_decay),
                "{}: weight_decay must be a number or a function of the parameter, got {}", name,
                class_name(weight_decay));
  return [decay = nb::cast<double>(weight_decay)](const Tensor&) { return decay; };
}

// Registering members, recording probes and stepping slots are for a Python subclass's own methods: the library's
// layers and optimizers are complete when constructed. `what` ends the error message.
template <class PythonClass, class Base>
PythonClass& python_subclass(Base& self, const char* class_name, const char* method, const char* what) {
  auto* subclass = dynamic_cast<PythonClass*>(&self);
  ELLIPSE_CHECK(subclass != nullptr, "{}.{}: only a Python subclass of ellipse.nn.{} {}", class_name, method,
                class_name, what);
  return *subclass;
}

constexpr const char* kRegisters = "registers its own members";
constexpr const char* kRecords = "records its own probes (the library's layers record theirs)";

// register_parameter and register_module for the Python subclasses of `cls` (a class bound with a trampoline).
template <class PythonLayer, class Class>
void bind_registration(Class& cls, const char* class_name) {
  using Base = typename Class::Type;
  cls.def(
         "register_parameter",
         [class_name](Base& self, const std::string& name, const Tensor& value) {
           return python_subclass<PythonLayer>(self, class_name, "register_parameter", kRegisters)
               .register_parameter(name, value);
         },
         "name"_a, "value"_a, "Makes value a parameter (requires grad) under name and returns it.")
      .def(
          "register_module",
          [class_name](Base& self, const std::string& name, std::shared_ptr<nn::Module> module) {
            return python_subclass<PythonLayer>(self, class_name, "register_module", kRegisters)
                .register_module(name, std::move(module));
          },
          "name"_a, "module"_a, "Makes module a child under name (its parameters are name.*) and returns it.");
}

Generator& or_default(Generator* gen) { return gen ? *gen : default_generator(); }

// An optimizer's parameters as Python gives them: Tensors (one group) or ParamGroups.
std::vector<nn::ParamGroup> parameter_groups(const nb::iterable& parameters, const char* optimizer) {
  std::vector<nn::ParamGroup> groups;
  std::vector<Tensor> tensors;
  for (nb::handle item : parameters) {
    if (nb::isinstance<Tensor>(item)) {
      tensors.push_back(nb::cast<Tensor>(item));
    } else {
      ELLIPSE_CHECK(nb::isinstance<nn::ParamGroup>(item), "{}: expected Tensors or ParamGroups as parameters, got {}",
                    optimizer, class_name(item));
      groups.push_back(nb::cast<nn::ParamGroup>(item));
    }
  }
  ELLIPSE_CHECK(tensors.empty() || groups.empty(), "{}: parameters mix Tensors and ParamGroups; put the Tensors in "
                "a ParamGroup of their own", optimizer);
  if (groups.empty()) groups.push_back(nn::ParamGroup{std::move(tensors), 1.0, std::nullopt});
  return groups;
}

// The Python factories of register_attention, by kind name (see there).
nb::dict attention_factories() {
  return nb::module_::import_("ellipse._ellipse").attr("nn").attr("_attention_factories");
}

nb::tuple attention_output(const nn::AttentionOutput& output) {
  return nb::make_tuple(output.out, recorded(output.v));
}

nb::dict to_dict(const nn::StateDict& entries) {
  nb::dict dict;
  for (const auto& [name, tensor] : entries) dict[name.c_str()] = tensor;
  return dict;
}

}  // namespace

void bind_nn(nb::module_& m) {
  nb::enum_<nn::Init>(m, "Init", "How a layer's parameters start: pytorch (torch.nn's defaults) or gpt2 (N(0, 0.02))")
      .value("pytorch", nn::Init::pytorch)
      .value("gpt2", nn::Init::gpt2);

  nb::class_<nn::Module>(m, "ModuleBase",
                         "A tree of named parameters and sub-modules (every model and layer of the library).")
      .def("named_parameters", [](const nn::Module& self) { return to_dict(self.named_parameters()); },
           "The parameters by dotted name, depth first in registration order.")
      .def("parameters", &nn::Module::parameters)
      .def("parameter_count", &nn::Module::parameter_count)
      .def("parameter", &nn::Module::parameter, "name"_a, "The parameter with this dotted name.")
      .def("state_dict", [](const nn::Module& self) { return to_dict(self.state_dict()); },
           "Detached copies of the parameters by dotted name.")
      .def(
          "load_state_dict",
          [](nn::Module& self, const nb::dict& dict, bool strict) {
            nn::StateDict entries;
            for (auto [name, tensor] : dict) {
              entries.emplace_back(nb::cast<std::string>(name), nb::cast<Tensor>(tensor));
            }
            nn::IncompatibleNames names = self.load_state_dict(entries, strict);
            return nb::make_tuple(names.missing, names.unexpected);
          },
          "state_dict"_a, "strict"_a = true,
          "Copies the tensors into the parameters in place; returns (missing, unexpected) names when not strict.")
      .def("train", &nn::Module::train, "on"_a = true)
      .def("eval", &nn::Module::eval)
      .def_prop_ro("training", &nn::Module::training)
      .def("zero_grad", &nn::Module::zero_grad)
      .def(
          "to",
          [](nb::handle self, Device device) {
            nb::cast<nn::Module&>(self).to(device);
            return nb::borrow(self);
          },
          "device"_a, "Moves every parameter to device in place; returns the module.")
      .def(
          "to",
          [](nb::handle self, DType dtype) {
            nb::cast<nn::Module&>(self).to(dtype);
            return nb::borrow(self);
          },
          "dtype"_a, "Converts every parameter to the floating dtype in place; returns the module.")
      .def_prop_ro("device", &nn::Module::device)
      .def(
          "add_forward_hook",
          [](nn::Module& self, nb::callable hook) {
            return self.add_forward_hook(
                [hook = hold(std::move(hook))](const nn::Module& module, const Tensor& output) -> Tensor {
                  nb::gil_scoped_acquire gil;
                  nb::object result = (*hook)(nb::cast(&module, nb::rv_policy::reference), output);
                  return result.is_none() ? Tensor() : nb::cast<Tensor>(result);
                });
          },
          "hook"_a,
          "hook(module, output) runs on the output of every forward of this module and returns None (keep it) or a "
          "tensor that replaces it. Returns an id for remove_forward_hook.")
      .def("remove_forward_hook", &nn::Module::remove_forward_hook, "id"_a);

  auto layer = nb::class_<nn::Layer, nn::Module, PyLayer>(
                   m, "Module",
                   "A module of one tensor in and one tensor out. Subclass it in Python: call super().__init__(), "
                   "register parameters and sub-modules with register_parameter and register_module, and define "
                   "forward(x).")
                   .def(nb::init<>())
                   .def("forward", &nn::Layer::forward, "x"_a, Release())
                   .def("__call__", &nn::Layer::forward, "x"_a, Release());
  bind_registration<PyLayer>(layer, "Module");

  nb::class_<nn::Sequential, nn::Layer>(m, "Sequential", "Layers applied in order, named '0', '1', ...")
      .def(nb::init<std::vector<std::shared_ptr<nn::Layer>>>(), "layers"_a)
      .def("append", &nn::Sequential::push_back, "layer"_a, nb::rv_policy::none)
      .def("__len__", &nn::Sequential::size);

  nb::class_<nn::Linear, nn::Layer>(m, "Linear", "y = x W^T + b with weight [out, in] and bias [out].")
      .def(
          "__init__",
          [](nn::Linear* self, std::int64_t in, std::int64_t out, bool bias, Generator* gen, nn::Init init) {
            new (self) nn::Linear(in, out, bias, or_default(gen), init);
          },
          "in_features"_a, "out_features"_a, "bias"_a = true, "gen"_a = nb::none(), "init"_a = nn::Init::pytorch)
      .def_prop_ro("weight", &nn::Linear::weight)
      .def_prop_ro("bias", [](const nn::Linear& self) {
        return self.bias().defined() ? std::optional<Tensor>(self.bias()) : std::nullopt;
      });
  nb::class_<nn::Embedding, nn::Layer>(m, "Embedding", "Rows of weight [num, dim] looked up by i64 ids.")
      .def(
          "__init__",
          [](nn::Embedding* self, std::int64_t num, std::int64_t dim, Generator* gen, nn::Init init) {
            new (self) nn::Embedding(num, dim, or_default(gen), init);
          },
          "num"_a, "dim"_a, "gen"_a = nb::none(), "init"_a = nn::Init::pytorch)
      .def_prop_ro("weight", &nn::Embedding::weight);
  nb::class_<nn::LayerNorm, nn::Layer>(m, "LayerNorm", "Normalises the last axis; weight starts at 1, bias at 0.")
      .def(nb::init<std::int64_t, double>(), "dim"_a, "eps"_a = 1e-5);
  nb::class_<nn::Dropout, nn::Layer>(m, "Dropout", "Zeroes activations with probability p in training mode.")
      .def(
          "__init__",
          [](nn::Dropout* self, double p, Generator* gen) { new (self) nn::Dropout(p, or_default(gen)); }, "p"_a,
          "gen"_a = nb::none(), nb::keep_alive<1, 3>())
      .def_prop_ro("p", &nn::Dropout::p);
  nb::class_<nn::MLP, nn::Layer>(m, "MLP", "fc1 (dim -> hidden), GELU (tanh approximation), fc2 (hidden -> dim).")
      .def(
          "__init__",
          [](nn::MLP* self, std::int64_t dim, std::int64_t hidden, Generator* gen, nn::Init init) {
            new (self) nn::MLP(dim, hidden, or_default(gen), init);
          },
          "dim"_a, "hidden"_a, "gen"_a = nb::none(), "init"_a = nn::Init::pytorch);

  // Through the C++ virtual: a Python subclass's forward, its output checked, then the forward hooks.
  const auto call_attention = [](nn::AttentionLayer& self, const Tensor& x, bool causal,
                                 const std::optional<Tensor>& v_prev) {
    nn::AttentionOutput output;
    {
      nb::gil_scoped_release release;
      output = self.forward(x, causal, v_prev.value_or(Tensor()));
    }
    return attention_output(output);
  };
  auto attention_layer =
      nb::class_<nn::AttentionLayer, nn::Module, PyAttentionLayer>(
          m, "AttentionLayer",
          "A transformer block's attention sublayer: forward(x [B, N, d], causal, v_prev) -> (out [B, N, d], v), v "
          "being this layer's value heads [B, H, N, dh] for the next layer (None when it hands none on). Subclass it "
          "in Python (call super().__init__(), register parameters and sub-modules, define forward(self, x, causal, "
          "v_prev) returning out or (out, v)) and register_attention a factory for it: the GPT and the ViT then build "
          "it by name.")
          .def(nb::init<>())
          .def("forward", call_attention, "x"_a, "causal"_a = false, "v_prev"_a = nb::none())
          .def("__call__", call_attention, "x"_a, "causal"_a = false, "v_prev"_a = nb::none(),
               "forward through the library: the output checked, then the forward hooks.")
          .def("keep_attention", &nn::AttentionLayer::keep_attention, "on"_a = true,
               "While on, each forward records its attention probabilities [B, H, N, N_keys] (and the metric m).")
          .def_prop_ro("keeps_attention", &nn::AttentionLayer::keeps_attention)
          .def_prop_ro("last_attention",
                       [](const nn::AttentionLayer& self) { return recorded(self.last_attention()); },
                       "The probabilities of the last forward while keep_attention was on, or None.")
          .def_prop_ro("last_metric", [](const nn::AttentionLayer& self) { return recorded(self.last_metric()); },
                       "The query scale m of the last forward of a layer that records one (elliptical), or None.")
          .def_prop_ro("decodes_incrementally", &nn::AttentionLayer::decodes_incrementally,
                       "Whether forward takes a KV cache (False for layers written in Python).")
          .def(
              "record_attention",
              [](nn::AttentionLayer& self, const Tensor& probabilities) {
                auto& layer = python_subclass<PyAttentionLayer>(self, "AttentionLayer", "record_attention", kRecords);
                if (layer.keeps_attention()) layer.record_attention(probabilities);
              },
              "probabilities"_a,
              "For a subclass's forward: keeps the probabilities [B, H, N, N_keys] for the probes while "
              "keep_attention is on (else nothing).")
          .def(
              "record_metric",
              [](nn::AttentionLayer& self, const Tensor& metric) {
                python_subclass<PyAttentionLayer>(self, "AttentionLayer", "record_metric", kRecords)
                    .record_metric(metric);
              },
              "metric"_a, "For a subclass's forward that scales its queries: the scale m, read by the probes.");
  bind_registration<PyAttentionLayer>(attention_layer, "AttentionLayer");
  nb::class_<nn::Attention, nn::AttentionLayer>(m, "Attention", "Standard multi-head attention.")
      .def(
          "__init__",
          [](nn::Attention* self, std::int64_t dim, std::int64_t heads, Generator* gen, nn::Init init) {
            new (self) nn::Attention(dim, heads, or_default(gen), init);
          },
          "dim"_a, "heads"_a, "gen"_a = nb::none(), "init"_a = nn::Init::pytorch)
      .def_prop_ro("heads", &nn::Attention::heads)
      .def_prop_ro("head_dim", &nn::Attention::head_dim);
  nb::class_<nn::EllipticalAttention, nn::Attention>(
      m, "EllipticalAttention",
      "Elliptical attention (Nielsen et al., NeurIPS 2024): the queries scaled by the metric m estimated from this "
      "and the previous layer's value heads; mode 'causal', 'sequence' or 'random'.")
      .def(
          "__init__",
          [](nn::EllipticalAttention* self, std::int64_t dim, std::int64_t heads, const std::string& mode,
             Generator* gen, nn::Init init) {
            new (self) nn::EllipticalAttention(dim, heads, nn::parse_metric_mode(mode), or_default(gen), init);
          },
          "dim"_a, "heads"_a, "mode"_a = "causal", "gen"_a = nb::none(), "init"_a = nn::Init::pytorch,
          nb::keep_alive<1, 5>())
      .def_prop_ro("mode", [](const nn::EllipticalAttention& self) {
        return std::string(nn::metric_mode_name(self.mode()));
      });
  nb::class_<nn::AttentionSlot>(m, "AttentionSlot", "Where an attention sublayer sits, for a registered factory.")
      .def_ro("dim", &nn::AttentionSlot::dim)
      .def_ro("heads", &nn::AttentionSlot::heads)
      .def_ro("layer", &nn::AttentionSlot::layer, "The block's depth, 0 first.")
      .def_prop_ro(
          "metric", [](const nn::AttentionSlot& slot) { return std::string(nn::metric_mode_name(slot.metric)); },
          "The model's metric option ('causal', 'sequence' or 'random'), for kinds that estimate one.")
      .def_prop_ro(
          "gen", [](const nn::AttentionSlot& slot) -> Generator& { return *slot.gen; }, nb::rv_policy::reference,
          "The model's initialisation stream: initialise the layer's parameters from it (gen=slot.gen) in the "
          "factory; it belongs to the model, so keep no reference to it.")
      .def_ro("init", &nn::AttentionSlot::init);
  // The Python factories live in this dict of the module rather than in the library's registry, whose entries
  // only look them up: Python then frees them, and the classes they build, when the interpreter ends.
  m.attr("_attention_factories") = nb::dict();
  m.def(
      "register_attention",
      [](const std::string& name, nb::callable factory) {
        nn::register_attention(name, [name](const nn::AttentionSlot& slot) {
          nb::gil_scoped_acquire gil;
          const nb::dict factories = attention_factories();
          ELLIPSE_CHECK(factories.contains(name.c_str()), "register_attention: the factory of '{}' was removed from "
                        "ellipse.nn._attention_factories", name);
          // A copy: a layer may keep its slot, which the library builds for this call only.
          const nb::object layer = factories[name.c_str()](nb::cast(slot, nb::rv_policy::copy));
          ELLIPSE_CHECK(nb::isinstance<nn::AttentionLayer>(layer),
                        "register_attention: the factory of '{}' returned {}, not an ellipse.nn.AttentionLayer", name,
                        class_name(layer));
          return nb::cast<std::shared_ptr<nn::AttentionLayer>>(layer);
        });
        attention_factories()[name.c_str()] = factory;
      },
      "name"_a, "factory"_a,
      "Makes `name` an attention kind: the GPT and ViT configs take it as their attention, and build each block's "
      "sublayer as factory(slot) (slot: an AttentionSlot). Names are non-empty, without whitespace and new.");
  m.def("attention_kinds", &nn::attention_kinds, "The registered attention kinds, sorted.");

  nb::class_<nn::Block, nn::Module>(m, "Block", "A pre-LN transformer block: x + attn(ln1(x)), then + mlp(ln2(x)).")
      .def(
          "__init__",
          [](nn::Block* self, std::int64_t dim, std::int64_t heads, const std::string& attention, std::int64_t layer,
             std::int64_t mlp_ratio, double dropout, const std::string& metric, Generator* gen, nn::Init init) {
            const nn::BlockConfig config{dim, heads, mlp_ratio, dropout, nn::parse_attention_kind(attention),
                                         nn::parse_metric_mode(metric)};
            new (self) nn::Block(config, layer, or_default(gen), init);
          },
          "dim"_a, "heads"_a, "attention"_a = "standard", "layer"_a = 0, "mlp_ratio"_a = 4, "dropout"_a = 0.0,
          "metric"_a = "sequence", "gen"_a = nb::none(), "init"_a = nn::Init::pytorch, nb::keep_alive<1, 9>(),
          "A block whose attention is any registered kind, built as the models build theirs: layer is its depth "
          "(elliptical attention is standard at layer 0), gen initialises it and drives its dropout.")
      .def(
          "forward",
          [](nn::Block& self, const Tensor& x, bool causal, const std::optional<Tensor>& v_prev) {
            nn::AttentionOutput output;
            {
              nb::gil_scoped_release release;
              output = self.forward(x, causal, v_prev.value_or(Tensor()));
            }
            return attention_output(output);
          },
          "x"_a, "causal"_a = false, "v_prev"_a = nb::none(), "(new x, this block's value heads).")
      .def_prop_ro("attention", &nn::Block::attention, nb::rv_policy::reference_internal)
      .def("keep_activations", &nn::Block::keep_activations, "on"_a = true,
           "While on, forward keeps the attention probabilities, the attention output and the block's output.")
      .def_prop_ro("last_attention_output",
                   [](const nn::Block& self) { return recorded(self.last_attention_output()); })
      .def_prop_ro("last_output", [](const nn::Block& self) { return recorded(self.last_output()); });
  m.def("token_collapse", &nn::token_collapse, "x"_a, Release(),
        "x [B, N, d]: the mean over the batch of the mean cosine similarity of the token pairs.");
  m.def("head_redundancy", &nn::head_redundancy, "attention"_a, Release(),
        "attention [B, H, N, M]: the mean L2 distance between the maps of different heads.");

  constexpr const char* kSteps = "steps its own slots (the library's optimizers step theirs)";
  auto optimizer = nb::class_<nn::Optimizer, PyOptimizer>(
      m, "Optimizer",
      "What every optimizer shares: step, zero_grad, the learning rate, the buffers. Subclass it for an optimizer of "
      "your own: call Optimizer.__init__(self, name, parameters, lr, buffer_names, weight_decay=0.0) and define "
      "step(self), which calls self.begin_step() and updates each of self.slots() in place.");
  nb::class_<PyOptimizer::Slot>(
      optimizer, "Slot",
      "One parameter with its group's settings and its buffers (zeros like it at first, one per buffer name). The "
      "tensors are the optimizer's own: update them in place (add_, mul_, copy_) within ellipse.no_grad().")
      .def_ro("parameter", &PyOptimizer::Slot::parameter)
      .def_ro("lr_scale", &PyOptimizer::Slot::lr_scale, "The group's scale of the optimizer's lr.")
      .def_ro("weight_decay", &PyOptimizer::Slot::weight_decay,
              "The group's weight decay, or the default the optimizer was given.")
      .def_ro("buffers", &PyOptimizer::Slot::buffers, "In buffer_names order.");
  optimizer
      .def(
          "__init__",
          [](nb::pointer_and_handle<nn::Optimizer> self, const std::string& name, const nb::iterable& parameters,
             double lr, std::vector<std::string> buffer_names, const nb::object& weight_decay) {
            ELLIPSE_CHECK(!nb::getattr(self.h.type(), "step").is(nb::getattr(nb::type<nn::Optimizer>(), "step")),
                          "{}: a subclass of ellipse.nn.Optimizer defines step(self)", class_name(self.h));
            new (static_cast<void*>(self.p))
                PyOptimizer(name, parameter_groups(parameters, name.c_str()), lr, std::move(buffer_names),
                            default_weight_decay(weight_decay, name));
          },
          "name"_a, "parameters"_a, "lr"_a, "buffer_names"_a = std::vector<std::string>{}, "weight_decay"_a = 0.0,
          "name: the kind a training checkpoint records; parameters: Tensors or ParamGroups; buffer_names: each "
          "parameter's buffers; weight_decay: the decay of parameters whose group sets none, a number or a function "
          "of the parameter.")
      .def("step", &nn::Optimizer::step, Release(), "One update from the parameters' current .grad.")
      .def("zero_grad", &nn::Optimizer::zero_grad)
      .def_prop_rw("lr", &nn::Optimizer::lr, &nn::Optimizer::set_lr, "The base learning rate.")
      .def_prop_ro("steps", &nn::Optimizer::steps)
      .def_prop_ro("name", &nn::Optimizer::name,
                   "The kind a training checkpoint records: \"AdamW\", \"SGD\" or a subclass's own.")
      .def_prop_ro("buffer_names", &nn::Optimizer::buffer_names,
                   "The names of each parameter's buffers, in state() order (AdamW: adam_m, adam_v).")
      .def("parameters", &nn::Optimizer::parameters)
      .def("state", &nn::Optimizer::state, "The buffers, each parameter's in turn (AdamW: [m0, v0, m1, ...]).")
      .def("load_state", &nn::Optimizer::load_state, "state"_a, "steps"_a)
      .def(
          "begin_step",
          [](nn::Optimizer& self) {
            return python_subclass<PyOptimizer>(self, "Optimizer", "begin_step", kSteps).begin_step();
          },
          "Counts a step and returns its number (1 for the first): the first call of a subclass's step.")
      .def(
          "slots",
          [](nn::Optimizer& self) { return python_subclass<PyOptimizer>(self, "Optimizer", "slots", kSteps).slots(); },
          "Every parameter with its settings and buffers, in parameters() order.")
      .def(
          "gradient",
          [](nn::Optimizer& self, const PyOptimizer::Slot& slot) {
            return recorded(python_subclass<PyOptimizer>(self, "Optimizer", "gradient", kSteps).gradient(slot));
          },
          "slot"_a, "The slot's gradient, contiguous, or None when it has none.");
  nb::class_<nn::ParamGroup>(
      m, "ParamGroup",
      "Parameters that share a learning rate and a weight decay: their rate is the optimizer's lr times lr_scale (so "
      "a schedule keeps the ratios), and weight_decay, when given, replaces the optimizer's rule for each of them.")
      .def(nb::init<std::vector<Tensor>, double, std::optional<double>>(), "parameters"_a, "lr_scale"_a = 1.0,
           "weight_decay"_a = nb::none())
      .def_rw("parameters", &nn::ParamGroup::parameters, "A copy of the list: assign a new list to change it.")
      .def_rw("lr_scale", &nn::ParamGroup::lr_scale)
      .def_rw("weight_decay", &nn::ParamGroup::weight_decay);
  nb::class_<nn::AdamW, nn::Optimizer>(
      m, "AdamW",
      "PyTorch's AdamW over Tensors or ParamGroups; the decoupled weight decay applies to parameters of 2 or more "
      "dimensions unless their group sets its own. Build it after moving the model: the moments live on each "
      "parameter's device.")
      .def(
          "__init__",
          [](nn::AdamW* self, const nb::iterable& parameters, double lr, double beta1, double beta2, double eps,
             double weight_decay) {
            new (self)
                nn::AdamW(parameter_groups(parameters, "AdamW"), nn::AdamWOptions{lr, beta1, beta2, eps, weight_decay});
          },
          "parameters"_a, "lr"_a = 1e-3, "beta1"_a = 0.9, "beta2"_a = 0.999, "eps"_a = 1e-8, "weight_decay"_a = 0.01);
  nb::class_<nn::SGD, nn::Optimizer>(
      m, "SGD", "PyTorch's SGD with momentum, dampening, L2 decay and Nesterov, over Tensors or ParamGroups.")
      .def(
          "__init__",
          [](nn::SGD* self, const nb::iterable& parameters, double lr, double momentum, double dampening,
             double weight_decay, bool nesterov) {
            new (self) nn::SGD(parameter_groups(parameters, "SGD"),
                               nn::SGDOptions{lr, momentum, dampening, weight_decay, nesterov});
          },
          "parameters"_a, "lr"_a = 1e-3, "momentum"_a = 0.0, "dampening"_a = 0.0, "weight_decay"_a = 0.0,
          "nesterov"_a = false);

  m.def("clip_grad_norm", &nn::clip_grad_norm, "parameters"_a, "max_norm"_a, Release(),
        "Scales all gradients so that their joint L2 norm is at most max_norm; returns the norm before clipping.");
  m.def("warmup_cosine_lr", &nn::warmup_cosine_lr, "step"_a, "warmup"_a, "total"_a, "peak"_a, "final_lr"_a,
        "Linear warm-up from 0 to peak over warmup steps, then cosine decay to final_lr at total steps.");
  m.def("save_parameters", &save_parameters, "path"_a, "module"_a, "metadata"_a = std::map<std::string, std::string>{},
        Release(), "Writes every parameter as F32 safetensors under its dotted name (atomically).");
  m.def("load_parameters", &load_parameters, "path"_a, "module"_a, Release(),
        "Loads a safetensors file into the module (exact names and shapes); returns its metadata.");

  using GeneratorStates = std::map<std::string, std::vector<std::uint64_t>>;
  using Fields = std::map<std::string, std::string>;
  nb::class_<TrainState>(m, "TrainState",
                         "What a training checkpoint holds beside the parameters and the optimizer's state: the step, "
                         "named generators' states (Generator.state()) and string fields. Reading generators or "
                         "fields gives a copy: assign a whole dict to change them.")
      .def(
          "__init__",
          [](TrainState* self, std::int64_t step, GeneratorStates generators, Fields fields) {
            new (self) TrainState{.step = step, .generators = std::move(generators), .fields = std::move(fields)};
          },
          "step"_a = 0, "generators"_a = GeneratorStates{}, "fields"_a = Fields{})
      .def_rw("step", &TrainState::step)
      .def_rw("generators", &TrainState::generators)
      .def_rw("fields", &TrainState::fields);
  m.def("save_train_state", &save_train_state, "path"_a, "module"_a, "optimizer"_a, "state"_a, Release(),
        "Writes what a run needs to continue bit for bit (atomically): the parameters, the optimizer's buffers "
        "under their names, its kind and step count, and `state`.");
  m.def("load_train_state", &load_train_state, "path"_a, "module"_a, "optimizer"_a, Release(),
        "Restores the module and the optimizer (of the kind that wrote the file) and returns the TrainState; "
        "checks every name and shape first, so nothing changes on a mismatch.");
}

}  // namespace ellipse::python
