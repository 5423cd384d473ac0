// Host-side test of libedgert_trt_plugins.so: no GPU, no TensorRT libraries, TensorRT's headers only.
//
//   plugin_host_test LIBRARY SPEC [--preload LIB] [--enqueue]
//   plugin_host_test LIBRARY --refused [--preload LIB]
//
// It loads the library as IPluginRegistry::loadLibrary and trtexec --dynamicPlugins do (dlopen,
// setLoggerFinder, getCreators) and, for every custom node of SPEC (written by tests/trt_spec.py
// from the ONNX files of a TensorRT-flavour export), repeats the ONNX parser's plugin fallback:
// the creator looked up by op type, plugin_version and plugin_namespace; the node's attributes
// turned into PluginFields as onnx-tensorrt does (only the creator's declared names; INT(S) ->
// kINT32, FLOAT(S) -> kFLOAT32, STRING -> kCHAR with its NUL; a declared name without an attribute
// is the parser's "not found" warning, a failure here); createPlugin(kBUILD). Then every
// capability, with the ONNX graph's types and shapes: output types and shapes, format
// combinations (each position accepts its ONNX type, refuses INT8 and a vectorized format),
// configure, workspace, aliased inputs, serialize -> createPlugin(kRUNTIME) round trip, clone,
// attachToContext, onShapeChange and, with --enqueue (only without a GPU), an enqueue that must fail
// cleanly. SPEC's reject cases are field sets createPlugin must refuse: a null plugin and exactly
// one logged error holding the expected words. --refused: the library must hand out nothing (a
// stand-in libnvinfer of another major is preloaded) and never touch the logger finder.
//
// Output: one line per case ("ok node NAME workspace BYTES", "ok reject ...", "FAIL ..."); exit 0
// when nothing failed.
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace {

// --- the logger TensorRT would hand over -------------------------------------------------------

struct Logger final : ILogger {
  std::vector<std::string> errors, warnings;
  void log(Severity severity, AsciiChar const* msg) noexcept override {
    if (severity <= Severity::kERROR) errors.emplace_back(msg);
    else if (severity == Severity::kWARNING) warnings.emplace_back(msg);
  }
};

struct LoggerFinder final : ILoggerFinder {
  Logger logger;
  int calls = 0;
  ILogger* findLogger() noexcept override {
    ++calls;
    return &logger;
  }
};

// --- dimension expressions: named symbols and constants, as the builder's would be ----------------

struct DimImpl final : apiv::VDimensionExpr {
  bool constant;
  int64_t value;
  std::string text;
  bool isConstant() const override { return constant; }
  int64_t getConstantValue() const override { return constant ? value : -1; }
  bool isSizeTensor() const override { return false; }
};

struct Dim final : IDimensionExpr {
  DimImpl impl;
  Dim(bool constant, int64_t value, std::string text) {
    impl.constant = constant;
    impl.value = value;
    impl.text = std::move(text);
    mImpl = &impl;
  }
  std::string const& text() const { return impl.text; }
};

struct ExprImpl final : apiv::VExprBuilder {
  std::vector<std::unique_ptr<Dim>> pool;
  Dim const* make(bool constant, int64_t value, std::string text) {
    pool.push_back(std::make_unique<Dim>(constant, value, std::move(text)));
    return pool.back().get();
  }
  Dim const* symbol(std::string const& name) { return make(false, -1, name); }
  IDimensionExpr const* constant(int64_t value) override { return make(true, value, std::to_string(value)); }
  IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override {
    auto const& x = static_cast<Dim const&>(a);
    auto const& y = static_cast<Dim const&>(b);
    std::string text = "op" + std::to_string(static_cast<int>(op)) + "(" + x.text() + "," + y.text() + ")";
    if (a.isConstant() && b.isConstant()) {
      int64_t u = a.getConstantValue(), v = b.getConstantValue();
      switch (op) {
        case DimensionOperation::kSUM: return constant(u + v);
        case DimensionOperation::kPROD: return constant(u * v);
        case DimensionOperation::kMAX: return constant(u > v ? u : v);
        case DimensionOperation::kMIN: return constant(u < v ? u : v);
        case DimensionOperation::kSUB: return constant(u - v);
        default: break;
      }
    }
    return make(false, -1, text);
  }
  IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override {
    return nullptr;  // no edgert plugin has data-dependent output shapes
  }
};

struct ExprBuilder final : IExprBuilder {
  ExprImpl impl;
  ExprBuilder() { mImpl = &impl; }
};

struct ResourceContext final : IPluginResourceContext {
  IGpuAllocator* getGpuAllocator() const noexcept override { return nullptr; }
  IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
};

// --- the spec ---------------------------------------------------------------------------------

struct Tensor {
  std::string name, dtype;
  std::vector<std::string> dims;  // integers or symbol names
};

struct Attr {
  std::string name, kind;
  std::vector<std::string> values;
};

struct Case {
  bool reject = false;
  std::string name, op, version, ns, needle;
  std::vector<Attr> attrs;
  std::vector<Tensor> inputs, outputs;
  std::map<int, int> aliases;  // output -> input
};

struct Symbol {
  int64_t min, opt, max;
};

std::map<std::string, DataType> const kTypes = {
    {"FLOAT", DataType::kFLOAT}, {"FLOAT16", DataType::kHALF}, {"BFLOAT16", DataType::kBF16},
    {"INT32", DataType::kINT32}, {"INT64", DataType::kINT64},  {"INT8", DataType::kINT8},
    {"BOOL", DataType::kBOOL},   {"UINT8", DataType::kUINT8}};

bool is_number(std::string const& s) { return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos; }

// --- PluginFields as onnx-tensorrt builds them -------------------------------------------------

struct FieldSet {
  std::vector<std::vector<int32_t>> ints;
  std::vector<std::vector<float>> floats;
  std::vector<std::string> strings;
  std::vector<PluginField> fields;
  PluginFieldCollection collection{};

  void add(Attr const& a) {
    if (a.kind == "INT" || a.kind == "INTS") {
      ints.emplace_back();
      for (auto const& v : a.values) ints.back().push_back(static_cast<int32_t>(std::stoll(v)));
    } else if (a.kind == "FLOAT" || a.kind == "FLOATS") {
      floats.emplace_back();
      for (auto const& v : a.values) floats.back().push_back(std::stof(v));
    } else {
      strings.push_back(a.values.empty() ? "" : a.values[0]);
    }
  }
  // Pointers are taken once every vector has stopped growing.
  PluginFieldCollection const* build(std::vector<Attr> const& attrs) {
    size_t i = 0, f = 0, s = 0;
    for (auto const& a : attrs) {
      if (a.kind == "INT" || a.kind == "INTS") {
        fields.emplace_back(a.name.c_str(), ints[i].data(), PluginFieldType::kINT32, static_cast<int32_t>(ints[i].size()));
        ++i;
      } else if (a.kind == "FLOAT" || a.kind == "FLOATS") {
        fields.emplace_back(a.name.c_str(), floats[f].data(), PluginFieldType::kFLOAT32,
                            static_cast<int32_t>(floats[f].size()));
        ++f;
      } else {
        fields.emplace_back(a.name.c_str(), strings[s].c_str(), PluginFieldType::kCHAR,
                            static_cast<int32_t>(strings[s].size() + 1));
        ++s;
      }
    }
    collection.nbFields = static_cast<int32_t>(fields.size());
    collection.fields = fields.data();
    return &collection;
  }
};

// A deep copy of a plugin's getFieldsToSerialize, and equality on it.
struct Serialized {
  std::vector<std::string> names;
  std::vector<PluginFieldType> types;
  std::vector<std::vector<char>> data;
  std::vector<int32_t> lengths;
  std::vector<PluginField> fields;
  PluginFieldCollection collection{};

  static size_t element_size(PluginFieldType t) {
    switch (t) {
      case PluginFieldType::kINT32: case PluginFieldType::kFLOAT32: return 4;
      case PluginFieldType::kCHAR: case PluginFieldType::kINT8: return 1;
      default: return 8;
    }
  }
  explicit Serialized(PluginFieldCollection const* fc) {
    for (int32_t i = 0; fc && i < fc->nbFields; ++i) {
      PluginField const& f = fc->fields[i];
      names.emplace_back(f.name ? f.name : "");
      types.push_back(f.type);
      lengths.push_back(f.length);
      auto bytes = static_cast<char const*>(f.data);
      data.emplace_back(bytes, bytes + element_size(f.type) * static_cast<size_t>(f.length));
    }
    for (size_t i = 0; i < names.size(); ++i) fields.emplace_back(names[i].c_str(), data[i].data(), types[i], lengths[i]);
    collection.nbFields = static_cast<int32_t>(fields.size());
    collection.fields = fields.data();
  }
  bool operator==(Serialized const& o) const {
    return names == o.names && types == o.types && lengths == o.lengths && data == o.data;
  }
};

// --- the checks -------------------------------------------------------------------------------

struct Failure {
  std::string what;
};

void require(bool ok, std::string const& what) {
  if (!ok) throw Failure{what};
}

class Harness {
 public:
  Harness(std::vector<IPluginCreatorInterface*> creators, LoggerFinder& finder, std::map<std::string, Symbol> symbols,
          bool enqueue)
      : creators_(std::move(creators)), logger_(finder.logger), symbols_(std::move(symbols)), enqueue_(enqueue) {}

  IPluginCreatorV3One* find(Case const& c) {
    for (auto* creator : creators_) {
      if (std::strcmp(creator->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") != 0) continue;
      auto* v3 = static_cast<IPluginCreatorV3One*>(creator);
      if (c.op == v3->getPluginName() && c.version == v3->getPluginVersion() && c.ns == v3->getPluginNamespace()) return v3;
    }
    return nullptr;
  }

  // "ok ..." (with the workspace) or throws a Failure.
  std::string run_node(Case const& c) {
    IPluginCreatorV3One* creator = find(c);
    require(creator != nullptr, "no creator for op " + c.op + " version " + c.version + " namespace " + c.ns +
                                    " (the parser: \"Plugin not found\")");
    // Only the creator's declared names, as the parser; a declared name the node lacks is its warning.
    std::vector<Attr> attrs;
    PluginFieldCollection const* declared = creator->getFieldNames();
    for (int32_t i = 0; declared && i < declared->nbFields; ++i) {
      bool found = false;
      for (auto const& a : c.attrs)
        if (a.name == declared->fields[i].name) attrs.push_back(a), found = true;
      require(found, std::string("attribute '") + declared->fields[i].name + "' not found in plugin node (the parser's "
                                                                              "warning: the engine relies on a default)");
    }
    FieldSet set;
    for (auto const& a : attrs) set.add(a);
    size_t errors = logger_.errors.size();
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin(c.name.c_str(), set.build(attrs), TensorRTPhase::kBUILD));
    require(plugin != nullptr, "createPlugin(kBUILD) returned null: " + last_error(errors));
    require(logger_.errors.size() == errors, "createPlugin logged an error: " + last_error(errors));

    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuildV2*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    require(core && build && runtime, "a capability interface is null");
    require(std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0 &&
                build->getInterfaceInfo().major == 2,
            "the build capability is not IPluginV3OneBuildV2 (needed for aliased I/O)");
    require(c.op == core->getPluginName() && c.version == core->getPluginVersion() && c.ns == core->getPluginNamespace(),
            "the plugin's name, version or namespace differs from its creator's");

    int32_t nin = static_cast<int32_t>(c.inputs.size()), nout = static_cast<int32_t>(c.outputs.size());
    require(build->getNbOutputs() == nout, "getNbOutputs " + std::to_string(build->getNbOutputs()) + ", the ONNX node has " +
                                               std::to_string(nout));
    // Types.
    std::vector<DataType> in_types, out_types(nout);
    for (auto const& t : c.inputs) in_types.push_back(kTypes.at(t.dtype));
    require(build->getOutputDataTypes(out_types.data(), nout, in_types.data(), nin) == 0, "getOutputDataTypes failed");
    for (int32_t i = 0; i < nout; ++i)
      require(out_types[i] == kTypes.at(c.outputs[i].dtype),
              "output " + c.outputs[i].name + ": type " + std::to_string(static_cast<int>(out_types[i])) +
                  ", the ONNX graph's is " + c.outputs[i].dtype);
    // Shapes, symbolically.
    ExprBuilder exprs;
    std::vector<DimsExprs> in_exprs(nin), out_exprs(nout);
    for (int32_t i = 0; i < nin; ++i) {
      in_exprs[i].nbDims = static_cast<int32_t>(c.inputs[i].dims.size());
      for (size_t d = 0; d < c.inputs[i].dims.size(); ++d) {
        std::string const& dim = c.inputs[i].dims[d];
        in_exprs[i].d[d] = is_number(dim) ? exprs.impl.constant(std::stoll(dim)) : exprs.impl.symbol(dim);
      }
    }
    require(build->getOutputShapes(in_exprs.data(), nin, nullptr, 0, out_exprs.data(), nout, exprs) == 0,
            "getOutputShapes failed: " + last_error(errors));
    for (int32_t i = 0; i < nout; ++i) {
      std::vector<std::string> got;
      for (int32_t d = 0; d < out_exprs[i].nbDims; ++d) got.push_back(static_cast<Dim const*>(out_exprs[i].d[d])->text());
      require(got == c.outputs[i].dims, "output " + c.outputs[i].name + ": shape " + join(got) + ", the ONNX graph's is " +
                                            join(c.outputs[i].dims));
    }
    // Formats: every position takes its ONNX type in linear layout, never INT8 or a vectorized format.
    std::vector<DynamicPluginTensorDesc> io;
    for (auto const& t : c.inputs) io.push_back(dynamic_desc(t));
    for (auto const& t : c.outputs) io.push_back(dynamic_desc(t));
    for (int32_t pos = 0; pos < nin + nout; ++pos) {
      std::string where = pos < nin ? "input " + c.inputs[pos].name : "output " + c.outputs[pos - nin].name;
      require(build->supportsFormatCombination(pos, io.data(), nin, nout), where + ": its ONNX type is refused");
      DynamicPluginTensorDesc saved = io[pos];
      io[pos].desc.type = DataType::kINT8;
      require(!build->supportsFormatCombination(pos, io.data(), nin, nout), where + ": accepts INT8");
      io[pos] = saved;
      io[pos].desc.format = TensorFormat::kCHW32;
      require(!build->supportsFormatCombination(pos, io.data(), nin, nout), where + ": accepts a vectorized format");
      io[pos] = saved;
    }
    require(build->configurePlugin(io.data(), nin, io.data() + nin, nout) == 0, "configurePlugin failed");
    size_t workspace = build->getWorkspaceSize(io.data(), nin, io.data() + nin, nout);
    for (int32_t out = 0; out < nout; ++out) {
      auto expected = c.aliases.count(out) ? c.aliases.at(out) : -1;
      require(build->getAliasedInput(out) == expected, "output " + c.outputs[out].name + ": aliased to input " +
                                                           std::to_string(build->getAliasedInput(out)) + ", expected " +
                                                           std::to_string(expected));
    }
    // Serialize -> createPlugin(kRUNTIME), clone, attachToContext: the same fields every time.
    Serialized fields(runtime->getFieldsToSerialize());
    std::unique_ptr<IPluginV3> restored(creator->createPlugin(c.name.c_str(), &fields.collection, TensorRTPhase::kRUNTIME));
    require(restored != nullptr, "createPlugin(kRUNTIME) refused the plugin's own serialized fields: " + last_error(errors));
    require(Serialized(runtime_of(*restored)->getFieldsToSerialize()) == fields, "the runtime plugin serializes differently");
    std::unique_ptr<IPluginV3> copy(plugin->clone());
    require(copy && Serialized(runtime_of(*copy)->getFieldsToSerialize()) == fields, "clone() differs");
    ResourceContext context;
    std::unique_ptr<IPluginV3> attached(runtime_of(*restored)->attachToContext(&context));
    require(attached && Serialized(runtime_of(*attached)->getFieldsToSerialize()) == fields, "attachToContext() differs");
    // Concrete shapes.
    std::vector<PluginTensorDesc> in_desc, out_desc;
    for (int32_t i = 0; i < nin; ++i) in_desc.push_back(io[i].desc);
    for (int32_t i = 0; i < nout; ++i) out_desc.push_back(io[nin + i].desc);
    IPluginV3OneRuntime* live = runtime_of(*attached);
    require(live->onShapeChange(in_desc.data(), nin, out_desc.data(), nout) == 0, "onShapeChange failed");
    if (enqueue_) {  // no GPU: the call must fail with one logged error, not crash
      std::vector<void const*> inputs(nin);
      std::vector<void*> outputs(nout);
      for (int32_t i = 0; i < nin; ++i) inputs[i] = fake(i);
      for (int32_t o = 0; o < nout; ++o) outputs[o] = c.aliases.count(o) ? const_cast<void*>(inputs[c.aliases.at(o)]) : fake(nin + o);
      size_t before = logger_.errors.size();
      int32_t status = live->enqueue(in_desc.data(), out_desc.data(), inputs.data(), outputs.data(), fake(99), nullptr);
      require(status != 0, "enqueue without a GPU returned 0");
      require(logger_.errors.size() == before + 1, "enqueue without a GPU logged " +
                                                       std::to_string(logger_.errors.size() - before) + " errors");
      require(logger_.errors.back().find("CUDA") != std::string::npos, "enqueue's error: " + logger_.errors.back());
    }
    return "workspace " + std::to_string(workspace);
  }

  void run_reject(Case const& c) {
    IPluginCreatorV3One* creator = find(c);
    require(creator != nullptr, "no creator for op " + c.op);
    FieldSet set;  // passed as given, unfiltered: what a direct API user or a forged engine could send
    for (auto const& a : c.attrs) set.add(a);
    size_t errors = logger_.errors.size();
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin(c.name.c_str(), set.build(c.attrs), TensorRTPhase::kBUILD));
    require(plugin == nullptr, "createPlugin accepted it");
    require(logger_.errors.size() == errors + 1, "logged " + std::to_string(logger_.errors.size() - errors) + " errors");
    std::string const& message = logger_.errors.back();
    require(message.find(c.needle) != std::string::npos, "the error '" + message + "' lacks '" + c.needle + "'");
    require(message.find('\n') == std::string::npos, "the error is more than one line");
  }

 private:
  static IPluginV3OneRuntime* runtime_of(IPluginV3& plugin) {
    return static_cast<IPluginV3OneRuntime*>(plugin.getCapabilityInterface(PluginCapabilityType::kRUNTIME));
  }
  static void* fake(int i) { return reinterpret_cast<void*>(uintptr_t(1) << 40 | uintptr_t(i) << 24); }  // aligned, never read
  static std::string join(std::vector<std::string> const& dims) {
    std::string out = "[";
    for (size_t i = 0; i < dims.size(); ++i) out += (i ? "," : "") + dims[i];
    return out + "]";
  }
  std::string last_error(size_t before) const {
    return logger_.errors.size() > before ? logger_.errors.back() : std::string("(nothing logged)");
  }
  DynamicPluginTensorDesc dynamic_desc(Tensor const& t) {
    DynamicPluginTensorDesc d{};
    d.desc.type = kTypes.at(t.dtype);
    d.desc.format = TensorFormat::kLINEAR;
    d.desc.scale = 1.f;
    Dims* all[] = {&d.desc.dims, &d.min, &d.opt, &d.max};
    for (Dims* dims : all) dims->nbDims = static_cast<int32_t>(t.dims.size());
    for (size_t i = 0; i < t.dims.size(); ++i) {
      std::string const& dim = t.dims[i];
      Symbol s = is_number(dim) ? Symbol{std::stoll(dim), std::stoll(dim), std::stoll(dim)} : symbols_.at(dim);
      d.desc.dims.d[i] = d.opt.d[i] = s.opt;
      d.min.d[i] = s.min;
      d.max.d[i] = s.max;
    }
    return d;
  }

  std::vector<IPluginCreatorInterface*> creators_;
  Logger& logger_;
  std::map<std::string, Symbol> symbols_;
  bool enqueue_;
};

bool read_spec(char const* path, std::vector<Case>& cases, std::map<std::string, Symbol>& symbols) {
  std::ifstream in(path);
  if (!in) return false;
  std::string line;
  Case* open = nullptr;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::string kind;
    if (!(words >> kind) || kind[0] == '#') continue;
    if (kind == "symbol") {
      std::string name;
      Symbol s{};
      words >> name >> s.min >> s.opt >> s.max;
      symbols[name] = s;
    } else if (kind == "node" || kind == "reject") {
      cases.emplace_back();
      open = &cases.back();
      open->reject = kind == "reject";
      words >> open->name >> open->op >> open->version >> open->ns;
      if (open->ns == "-") open->ns.clear();  // the parser's default namespace
      std::getline(words >> std::ws, open->needle);
    } else if (kind == "attr" && open) {
      Attr a;
      words >> a.name >> a.kind;
      for (std::string v; words >> v;) a.values.push_back(v);
      open->attrs.push_back(a);
    } else if ((kind == "input" || kind == "output") && open) {
      Tensor t;
      words >> t.name >> t.dtype;
      for (std::string d; words >> d;) t.dims.push_back(d);
      (kind == "input" ? open->inputs : open->outputs).push_back(t);
    } else if (kind == "alias" && open) {
      int out = -1, input = -1;
      words >> out >> input;
      open->aliases[out] = input;
    } else if (kind == "end") {
      open = nullptr;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: plugin_host_test LIBRARY (SPEC [--enqueue] | --refused) [--preload LIB]" << std::endl;
    return 2;
  }
  bool refused = false, enqueue = false;
  char const* spec = nullptr;
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--refused") refused = true;
    else if (arg == "--enqueue") enqueue = true;
    else if (arg == "--preload" && i + 1 < argc) {
      if (!dlopen(argv[++i], RTLD_NOW | RTLD_LOCAL)) {  // RTLD_LOCAL, as Python's tensorrt module loads it
        std::cerr << "cannot preload " << argv[i] << ": " << dlerror() << std::endl;
        return 2;
      }
    } else spec = argv[i];
  }
  void* library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!library) {
    std::cerr << "cannot load " << argv[1] << ": " << dlerror() << std::endl;
    return 2;
  }
  using SetLoggerFinder = void (*)(ILoggerFinder*);
  using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
  auto set_finder = reinterpret_cast<SetLoggerFinder>(dlsym(library, "setLoggerFinder"));
  auto get_creators = reinterpret_cast<GetCreators>(dlsym(library, "getCreators"));
  if (!set_finder || !get_creators) {
    std::cout << "FAIL library: setLoggerFinder or getCreators is not exported" << std::endl;
    return 1;
  }
  static LoggerFinder finder;
  set_finder(&finder);
  int32_t count = -1;
  IPluginCreatorInterface* const* list = get_creators(count);
  if (refused) {
    bool ok = count == 0 && finder.calls == 0;
    std::cout << (ok ? "ok refused" : "FAIL refused") << ": " << count << " creators, logger finder called "
              << finder.calls << " times" << std::endl;
    return ok ? 0 : 1;
  }
  if (count <= 0 || !list) {
    std::cout << "FAIL library: getCreators returned " << count << " creators" << std::endl;
    return 1;
  }
  std::vector<Case> cases;
  std::map<std::string, Symbol> symbols;
  if (!spec || !read_spec(spec, cases, symbols)) {
    std::cerr << "cannot read the spec " << (spec ? spec : "(none given)") << std::endl;
    return 2;
  }
  Harness harness(std::vector<IPluginCreatorInterface*>(list, list + count), finder, symbols, enqueue);
  int failed = 0;
  for (Case const& c : cases) {
    try {
      if (c.reject) {
        harness.run_reject(c);
        std::cout << "ok reject " << c.name << " " << c.op << ": " << finder.logger.errors.back() << std::endl;
      } else {
        std::cout << "ok node " << c.name << " " << c.op << " " << harness.run_node(c) << std::endl;
      }
    } catch (Failure const& f) {
      ++failed;
      std::cout << "FAIL " << (c.reject ? "reject " : "node ") << c.name << " " << c.op << ": " << f.what << std::endl;
    } catch (std::exception const& e) {  // a malformed spec line (std::stoll, map::at)
      ++failed;
      std::cout << "FAIL " << c.name << ": spec error " << e.what() << std::endl;
    }
  }
  std::cout << "summary " << cases.size() - failed << " passed, " << failed << " failed" << std::endl;
  return failed ? 1 : 0;
}
