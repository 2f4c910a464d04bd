#include "checkpoint/pickle.h"

#include <cstring>
#include <unordered_map>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/status_macros.h"

namespace convnext::pickle {

const Value* Value::Find(absl::string_view key) const {
  if (kind != Kind::kDict) return nullptr;
  for (const auto& [k, v] : entries) {
    if (k->kind == Kind::kString && k->text == key) return v;
  }
  return nullptr;
}

namespace {

// What one memo entry costs in the unordered_map (node, key, value, bucket), for Charge.
constexpr size_t kMemoEntryBytes = 48;

// Modules whose globals can run code, read files or reach the network: no checkpoint needs any.
constexpr const char* kRefusedModules[] = {
    "os",         "posix",     "nt",        "subprocess", "sys",       "shutil",
    "socket",     "importlib", "runpy",     "pty",        "code",      "pickle",
    "_pickle",    "marshal",   "ctypes",    "commands",   "platform",  "multiprocessing",
    "webbrowser", "operator",  "functools", "types",      "io",        "_io",
    "pathlib",    "tempfile",  "signal",    "asyncio",    "threading", "inspect",
    "pdb",        "timeit",    "http",      "urllib",     "ftplib",
};
// Names from builtins (or Python 2's __builtin__) that can run code; the rest (set, slice, ...)
// are harmless types.
constexpr const char* kRefusedBuiltins[] = {
    "eval",        "exec",         "execfile", "compile",    "open",   "__import__", "getattr",
    "setattr",     "delattr",      "globals",  "locals",     "vars",   "input",      "breakpoint",
    "exit",        "quit",         "help",     "memoryview", "reload", "file",       "apply",
    "classmethod", "staticmethod", "property", "super",      "type",   "object",
};

bool IsRefused(absl::string_view module, absl::string_view name) {
  const absl::string_view top = module.substr(0, module.find('.'));
  if (top == "builtins" || top == "__builtin__") {
    for (const char* n : kRefusedBuiltins) {
      if (name == n) return true;
    }
    return false;
  }
  for (const char* m : kRefusedModules) {
    if (top == m) return true;
  }
  return false;
}

}  // namespace

class Unpickler {
 public:
  Unpickler(absl::string_view data, const Limits& limits)
      : data_(data), limits_(limits), result_(new Unpickled()) {}

  absl::StatusOr<std::unique_ptr<Unpickled>> Run() {
    while (true) {
      if (pos_ >= data_.size()) return Error("ends without a STOP opcode");
      op_pos_ = pos_;
      const uint8_t op = static_cast<uint8_t>(data_[pos_++]);
      if (op == '.') break;
      RETURN_IF_ERROR(Step(op));
    }
    if (stack_.size() != 1) {
      return Error(absl::StrCat("STOP with ", stack_.size(), " values on the stack, expected 1"));
    }
    result_->root_ = stack_.back();
    return std::move(result_);
  }

 private:
  using Kind = Value::Kind;

  absl::Status Error(absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat("malformed pickle at byte ", op_pos_, ": ", what));
  }

  // Counts `bytes` against Limits::max_bytes: every value, string and copied item list is charged,
  // so that a few bytes of pickle that copy a large list many times (a set or a call built from
  // a memoized tuple) are refused instead of exhausting memory.
  absl::Status Charge(size_t bytes) {
    bytes_ += bytes;
    if (bytes_ > limits_.max_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("pickle at byte ", op_pos_, " would need more than ", limits_.max_bytes,
                       " bytes of memory (the unpickler's limit); nothing was loaded"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<Value*> New(Kind kind) {
    if (result_->arena_.size() >= limits_.max_values) {
      return Error(absl::StrCat("more than ", limits_.max_values, " values"));
    }
    RETURN_IF_ERROR(Charge(sizeof(Value) + sizeof(std::unique_ptr<Value>)));
    result_->arena_.push_back(std::make_unique<Value>());
    Value* v = result_->arena_.back().get();
    v->kind = kind;
    return v;
  }

  absl::Status Push(Kind kind) {
    ASSIGN_OR_RETURN(Value * v, New(kind));
    stack_.push_back(v);
    return absl::OkStatus();
  }

  absl::StatusOr<Value*> Pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) {
      return Error("stack underflow");
    }
    Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }

  absl::StatusOr<Value*> Top() {
    if (stack_.empty()) return Error("stack underflow");
    return stack_.back();
  }

  // Pops everything above the topmost mark, and the mark.
  absl::StatusOr<std::vector<Value*>> PopToMark() {
    if (marks_.empty()) return Error("no MARK");
    const size_t mark = marks_.back();
    marks_.pop_back();
    if (mark > stack_.size()) return Error("MARK above the stack");
    std::vector<Value*> items(stack_.begin() + mark, stack_.end());
    stack_.resize(mark);
    return items;
  }

  absl::StatusOr<absl::string_view> Read(uint64_t n) {
    if (n > data_.size() - pos_) {
      return Error(absl::StrCat("needs ", n, " more bytes, only ", data_.size() - pos_, " left"));
    }
    absl::string_view s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }

  absl::StatusOr<uint64_t> ReadUint(int bytes) {
    ASSIGN_OR_RETURN(absl::string_view s, Read(bytes));
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(s[i]);
    return v;
  }

  absl::StatusOr<absl::string_view> ReadLine() {
    const size_t end = data_.find('\n', pos_);
    if (end == absl::string_view::npos) return Error("unterminated text argument");
    absl::string_view s = data_.substr(pos_, end - pos_);
    pos_ = end + 1;
    return s;
  }

  absl::Status PushInt(int64_t v) {
    ASSIGN_OR_RETURN(Value * x, New(Kind::kInt));
    x->integer = v;
    stack_.push_back(x);
    return absl::OkStatus();
  }

  absl::Status PushText(Kind kind, absl::string_view s) {
    RETURN_IF_ERROR(Charge(s.size()));
    ASSIGN_OR_RETURN(Value * x, New(kind));
    x->text = std::string(s);
    stack_.push_back(x);
    return absl::OkStatus();
  }

  absl::Status PushGlobal(absl::string_view module, absl::string_view name) {
    if (IsRefused(module, name)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "refusing to load: the pickle references ", module, ".", name,
          ", which can run code and which no checkpoint needs (nothing was executed)"));
    }
    return PushText(Kind::kGlobal, absl::StrCat(module, ".", name));
  }

  // Two's-complement little-endian integer of up to 8 bytes (LONG1/LONG4).
  absl::Status PushLong(uint64_t n) {
    if (n > 8) return Error(absl::StrCat("integer of ", n, " bytes is too large"));
    ASSIGN_OR_RETURN(absl::string_view s, Read(n));
    uint64_t v = 0;
    for (int i = static_cast<int>(n) - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(s[i]);
    if (n > 0 && n < 8 && (static_cast<uint8_t>(s[n - 1]) & 0x80)) v |= ~uint64_t{0} << (8 * n);
    return PushInt(static_cast<int64_t>(v));
  }

  absl::Status Memoize(uint64_t index) {
    ASSIGN_OR_RETURN(Value * top, Top());
    if (memo_.size() >= limits_.max_values) return Error("memo too large");
    RETURN_IF_ERROR(Charge(kMemoEntryBytes));
    memo_[index] = top;
    return absl::OkStatus();
  }

  absl::Status Recall(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) return Error(absl::StrCat("memo key ", index, " was never stored"));
    stack_.push_back(it->second);
    return absl::OkStatus();
  }

  absl::Status SetItems(Value* dict, const std::vector<Value*>& kv) {
    if (kv.size() % 2 != 0) return Error("SETITEMS with an odd number of values");
    if (dict->kind != Kind::kDict) {
      // Items set on an inert object (a custom mapping): ignored.
      if (dict->kind == Kind::kObject) return absl::OkStatus();
      return Error("SETITEM on a value that is not a dict");
    }
    RETURN_IF_ERROR(Charge(kv.size() / 2 * sizeof(dict->entries[0])));
    for (size_t i = 0; i < kv.size(); i += 2) dict->entries.emplace_back(kv[i], kv[i + 1]);
    return absl::OkStatus();
  }

  absl::Status Append(Value* list, const std::vector<Value*>& items) {
    if (list->kind == Kind::kList || list->kind == Kind::kSet) {
      RETURN_IF_ERROR(Charge(items.size() * sizeof(Value*)));
      list->items.insert(list->items.end(), items.begin(), items.end());
      return absl::OkStatus();
    }
    if (list->kind == Kind::kObject) return absl::OkStatus();  // A custom sequence: ignored.
    return Error("APPEND to a value that is not a list");
  }

  absl::StatusOr<std::vector<int64_t>> IntTuple(const Value* v, absl::string_view what) {
    if (v->kind != Kind::kTuple && v->kind != Kind::kList) {
      return Error(absl::StrCat("tensor ", what, " is not a tuple"));
    }
    if (v->items.size() > limits_.max_dims) {
      return Error(absl::StrCat("tensor has more than ", limits_.max_dims, " dimensions"));
    }
    std::vector<int64_t> out;
    for (const Value* x : v->items) {
      if (x->kind != Kind::kInt || x->integer < 0) {
        return Error(absl::StrCat("tensor ", what, " holds a value that is not a whole number"));
      }
      out.push_back(x->integer);
    }
    return out;
  }

  // Applies a call of `callable` to `args` (REDUCE, NEWOBJ) without running anything.
  absl::StatusOr<Value*> Call(const Value* callable, const Value* args) {
    const std::string name = callable->kind == Kind::kGlobal ? callable->text : "";
    const std::vector<const Value*> no_args;
    const std::vector<const Value*>& a = args->kind == Kind::kTuple ? args->items : no_args;
    if (name == "collections.OrderedDict" || name == "builtins.dict") return New(Kind::kDict);
    if (name == "builtins.set" || name == "builtins.frozenset" || name == "__builtin__.set") {
      ASSIGN_OR_RETURN(Value * set, New(Kind::kSet));
      if (!a.empty() && (a[0]->kind == Kind::kList || a[0]->kind == Kind::kTuple)) {
        RETURN_IF_ERROR(Charge(a[0]->items.size() * sizeof(Value*)));
        set->items = a[0]->items;
      }
      return set;
    }
    if (name == "torch._utils._rebuild_tensor_v2" || name == "torch._utils._rebuild_tensor") {
      if (a.size() < 4 || a[0]->kind != Kind::kStorage || a[1]->kind != Kind::kInt) {
        return Error(absl::StrCat(name, " called with unexpected arguments"));
      }
      ASSIGN_OR_RETURN(Value * t, New(Kind::kTensor));
      t->tensor.storage = a[0]->storage;
      t->tensor.offset = a[1]->integer;
      ASSIGN_OR_RETURN(t->tensor.size, IntTuple(a[2], "size"));
      ASSIGN_OR_RETURN(t->tensor.stride, IntTuple(a[3], "stride"));
      if (t->tensor.size.size() != t->tensor.stride.size() || t->tensor.offset < 0) {
        return Error("tensor size, stride and offset do not agree");
      }
      return t;
    }
    if (name == "torch._utils._rebuild_parameter" ||
        name == "torch._utils._rebuild_parameter_with_state") {
      if (a.empty() || a[0]->kind != Kind::kTensor) {
        return Error(absl::StrCat(name, " called without a tensor"));
      }
      return const_cast<Value*>(a[0]);
    }
    // Anything else: an inert placeholder remembering what it was.
    ASSIGN_OR_RETURN(Value * obj, New(Kind::kObject));
    RETURN_IF_ERROR(Charge(a.size() * sizeof(Value*)));
    obj->text = name.empty() ? "<call of a non-global>" : name;
    obj->items = a;
    return obj;
  }

  absl::StatusOr<Value*> PersistentLoad(const Value* pid) {
    // ('storage', torch.FloatStorage, key, location, numel)
    if (pid->kind != Kind::kTuple || pid->items.size() < 5 ||
        pid->items[0]->kind != Kind::kString || pid->items[0]->text != "storage" ||
        pid->items[1]->kind != Kind::kGlobal || pid->items[2]->kind != Kind::kString ||
        pid->items[3]->kind != Kind::kString || pid->items[4]->kind != Kind::kInt ||
        pid->items[4]->integer < 0) {
      return Error("persistent id is not ('storage', type, key, location, numel)");
    }
    absl::string_view type = pid->items[1]->text;
    if (!absl::ConsumePrefix(&type, "torch.")) {
      return Error(absl::StrCat("storage type ", type, " is not a torch storage"));
    }
    ASSIGN_OR_RETURN(Value * s, New(Kind::kStorage));
    s->storage.type = std::string(type);
    s->storage.key = pid->items[2]->text;
    s->storage.location = pid->items[3]->text;
    s->storage.numel = pid->items[4]->integer;
    return s;
  }

  absl::Status Step(uint8_t op) {
    switch (op) {
      case 0x80: {  // PROTO
        ASSIGN_OR_RETURN(uint64_t proto, ReadUint(1));
        if (proto > 5) return Error(absl::StrCat("unsupported pickle protocol ", proto));
        return absl::OkStatus();
      }
      case 0x95:  // FRAME: a length we do not need.
        return ReadUint(8).status();
      case '(':  // MARK
        marks_.push_back(stack_.size());
        return absl::OkStatus();
      case '0':  // POP
        return Pop().status();
      case '1':  // POP_MARK
        return PopToMark().status();
      case '2': {  // DUP
        ASSIGN_OR_RETURN(Value * top, Top());
        stack_.push_back(top);
        return absl::OkStatus();
      }
      case 'N':  // NONE
        return Push(Kind::kNone);
      case 0x88:    // NEWTRUE
      case 0x89: {  // NEWFALSE
        ASSIGN_OR_RETURN(Value * b, New(Kind::kBool));
        b->boolean = op == 0x88;
        stack_.push_back(b);
        return absl::OkStatus();
      }
      case 'I': {  // INT (text; "00"/"01" are False/True)
        ASSIGN_OR_RETURN(absl::string_view line, ReadLine());
        int64_t v = 0;
        if (!absl::SimpleAtoi(line, &v)) return Error("bad INT");
        return PushInt(v);
      }
      case 'L': {  // LONG (text)
        ASSIGN_OR_RETURN(absl::string_view line, ReadLine());
        int64_t v = 0;
        if (!absl::SimpleAtoi(absl::StripSuffix(line, "L"), &v)) return Error("bad LONG");
        return PushInt(v);
      }
      case 'J': {  // BININT
        ASSIGN_OR_RETURN(uint64_t v, ReadUint(4));
        return PushInt(static_cast<int32_t>(static_cast<uint32_t>(v)));
      }
      case 'K': {  // BININT1
        ASSIGN_OR_RETURN(uint64_t v, ReadUint(1));
        return PushInt(static_cast<int64_t>(v));
      }
      case 'M': {  // BININT2
        ASSIGN_OR_RETURN(uint64_t v, ReadUint(2));
        return PushInt(static_cast<int64_t>(v));
      }
      case 0x8a: {  // LONG1
        ASSIGN_OR_RETURN(uint64_t n, ReadUint(1));
        return PushLong(n);
      }
      case 0x8b: {  // LONG4
        ASSIGN_OR_RETURN(uint64_t n, ReadUint(4));
        return PushLong(n);
      }
      case 'F': {  // FLOAT (text)
        ASSIGN_OR_RETURN(absl::string_view line, ReadLine());
        ASSIGN_OR_RETURN(Value * f, New(Kind::kFloat));
        if (!absl::SimpleAtod(line, &f->real)) return Error("bad FLOAT");
        stack_.push_back(f);
        return absl::OkStatus();
      }
      case 'G': {  // BINFLOAT, big-endian
        ASSIGN_OR_RETURN(absl::string_view s, Read(8));
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | static_cast<uint8_t>(s[i]);
        ASSIGN_OR_RETURN(Value * f, New(Kind::kFloat));
        std::memcpy(&f->real, &bits, 8);
        stack_.push_back(f);
        return absl::OkStatus();
      }
      case 'X':    // BINUNICODE
      case 'T':    // BINSTRING
      case 'B': {  // BINBYTES
        ASSIGN_OR_RETURN(uint64_t n, ReadUint(4));
        ASSIGN_OR_RETURN(absl::string_view s, Read(n));
        return PushText(op == 'B' ? Kind::kBytes : Kind::kString, s);
      }
      case 0x8c:   // SHORT_BINUNICODE
      case 'U':    // SHORT_BINSTRING
      case 'C': {  // SHORT_BINBYTES
        ASSIGN_OR_RETURN(uint64_t n, ReadUint(1));
        ASSIGN_OR_RETURN(absl::string_view s, Read(n));
        return PushText(op == 'C' ? Kind::kBytes : Kind::kString, s);
      }
      case 0x8d:    // BINUNICODE8
      case 0x8e:    // BINBYTES8
      case 0x96: {  // BYTEARRAY8
        ASSIGN_OR_RETURN(uint64_t n, ReadUint(8));
        ASSIGN_OR_RETURN(absl::string_view s, Read(n));
        return PushText(op == 0x8d ? Kind::kString : Kind::kBytes, s);
      }
      case 'S':    // STRING (quoted repr)
      case 'V': {  // UNICODE (raw-unicode-escape): kept verbatim, only names use them.
        ASSIGN_OR_RETURN(absl::string_view line, ReadLine());
        if (op == 'S' && line.size() >= 2 && (line[0] == '\'' || line[0] == '"')) {
          line = line.substr(1, line.size() - 2);
        }
        return PushText(Kind::kString, line);
      }
      case ')':  // EMPTY_TUPLE
        return Push(Kind::kTuple);
      case 't': {  // TUPLE
        ASSIGN_OR_RETURN(std::vector<Value*> items, PopToMark());
        ASSIGN_OR_RETURN(Value * t, New(Kind::kTuple));
        t->items.assign(items.begin(), items.end());
        stack_.push_back(t);
        return absl::OkStatus();
      }
      case 0x85:    // TUPLE1
      case 0x86:    // TUPLE2
      case 0x87: {  // TUPLE3
        const size_t n = op - 0x84;
        ASSIGN_OR_RETURN(Value * t, New(Kind::kTuple));
        t->items.resize(n);
        for (size_t i = n; i > 0; --i) {
          ASSIGN_OR_RETURN(t->items[i - 1], Pop());
        }
        stack_.push_back(t);
        return absl::OkStatus();
      }
      case ']':  // EMPTY_LIST
        return Push(Kind::kList);
      case 'l': {  // LIST
        ASSIGN_OR_RETURN(std::vector<Value*> items, PopToMark());
        ASSIGN_OR_RETURN(Value * l, New(Kind::kList));
        l->items.assign(items.begin(), items.end());
        stack_.push_back(l);
        return absl::OkStatus();
      }
      case 'a': {  // APPEND
        ASSIGN_OR_RETURN(Value * item, Pop());
        ASSIGN_OR_RETURN(Value * list, Top());
        return Append(list, {item});
      }
      case 'e':     // APPENDS
      case 0x90: {  // ADDITEMS
        ASSIGN_OR_RETURN(std::vector<Value*> items, PopToMark());
        ASSIGN_OR_RETURN(Value * list, Top());
        return Append(list, items);
      }
      case 0x8f:  // EMPTY_SET
        return Push(Kind::kSet);
      case 0x91: {  // FROZENSET
        ASSIGN_OR_RETURN(std::vector<Value*> items, PopToMark());
        ASSIGN_OR_RETURN(Value * s, New(Kind::kSet));
        s->items.assign(items.begin(), items.end());
        stack_.push_back(s);
        return absl::OkStatus();
      }
      case '}':  // EMPTY_DICT
        return Push(Kind::kDict);
      case 'd': {  // DICT
        ASSIGN_OR_RETURN(std::vector<Value*> kv, PopToMark());
        ASSIGN_OR_RETURN(Value * d, New(Kind::kDict));
        stack_.push_back(d);
        return SetItems(d, kv);
      }
      case 's': {  // SETITEM
        ASSIGN_OR_RETURN(Value * v, Pop());
        ASSIGN_OR_RETURN(Value * k, Pop());
        ASSIGN_OR_RETURN(Value * d, Top());
        return SetItems(d, {k, v});
      }
      case 'u': {  // SETITEMS
        ASSIGN_OR_RETURN(std::vector<Value*> kv, PopToMark());
        ASSIGN_OR_RETURN(Value * d, Top());
        return SetItems(d, kv);
      }
      case 'c': {  // GLOBAL
        ASSIGN_OR_RETURN(absl::string_view module, ReadLine());
        ASSIGN_OR_RETURN(absl::string_view name, ReadLine());
        return PushGlobal(module, name);
      }
      case 0x93: {  // STACK_GLOBAL
        ASSIGN_OR_RETURN(Value * name, Pop());
        ASSIGN_OR_RETURN(Value * module, Pop());
        if (name->kind != Kind::kString || module->kind != Kind::kString) {
          return Error("STACK_GLOBAL needs two strings");
        }
        return PushGlobal(module->text, name->text);
      }
      case 'R': {  // REDUCE
        ASSIGN_OR_RETURN(Value * args, Pop());
        ASSIGN_OR_RETURN(Value * callable, Pop());
        ASSIGN_OR_RETURN(Value * result, Call(callable, args));
        stack_.push_back(result);
        return absl::OkStatus();
      }
      case 0x81: {  // NEWOBJ
        ASSIGN_OR_RETURN(Value * args, Pop());
        ASSIGN_OR_RETURN(Value * cls, Pop());
        ASSIGN_OR_RETURN(Value * result, Call(cls, args));
        stack_.push_back(result);
        return absl::OkStatus();
      }
      case 0x92: {                        // NEWOBJ_EX
        RETURN_IF_ERROR(Pop().status());  // kwargs
        ASSIGN_OR_RETURN(Value * args, Pop());
        ASSIGN_OR_RETURN(Value * cls, Pop());
        ASSIGN_OR_RETURN(Value * result, Call(cls, args));
        stack_.push_back(result);
        return absl::OkStatus();
      }
      case 'i': {  // INST
        ASSIGN_OR_RETURN(absl::string_view module, ReadLine());
        ASSIGN_OR_RETURN(absl::string_view name, ReadLine());
        RETURN_IF_ERROR(PushGlobal(module, name));
        ASSIGN_OR_RETURN(Value * cls, Pop());
        ASSIGN_OR_RETURN(std::vector<Value*> items, PopToMark());
        ASSIGN_OR_RETURN(Value * args, New(Kind::kTuple));
        args->items.assign(items.begin(), items.end());
        ASSIGN_OR_RETURN(Value * result, Call(cls, args));
        stack_.push_back(result);
        return absl::OkStatus();
      }
      case 'o': {  // OBJ
        ASSIGN_OR_RETURN(std::vector<Value*> items, PopToMark());
        if (items.empty()) return Error("OBJ without a class");
        ASSIGN_OR_RETURN(Value * args, New(Kind::kTuple));
        args->items.assign(items.begin() + 1, items.end());
        ASSIGN_OR_RETURN(Value * result, Call(items[0], args));
        stack_.push_back(result);
        return absl::OkStatus();
      }
      case 'b': {  // BUILD: state for the object below; dicts, tensors and placeholders ignore it.
        RETURN_IF_ERROR(Pop().status());
        return Top().status();
      }
      case 'Q': {  // BINPERSID
        ASSIGN_OR_RETURN(Value * pid, Pop());
        ASSIGN_OR_RETURN(Value * storage, PersistentLoad(pid));
        stack_.push_back(storage);
        return absl::OkStatus();
      }
      case 'p': {  // PUT
        ASSIGN_OR_RETURN(absl::string_view line, ReadLine());
        uint64_t index = 0;
        if (!absl::SimpleAtoi(line, &index)) return Error("bad PUT");
        return Memoize(index);
      }
      case 'q': {  // BINPUT
        ASSIGN_OR_RETURN(uint64_t index, ReadUint(1));
        return Memoize(index);
      }
      case 'r': {  // LONG_BINPUT
        ASSIGN_OR_RETURN(uint64_t index, ReadUint(4));
        return Memoize(index);
      }
      case 0x94:  // MEMOIZE
        return Memoize(memo_.size());
      case 'g': {  // GET
        ASSIGN_OR_RETURN(absl::string_view line, ReadLine());
        uint64_t index = 0;
        if (!absl::SimpleAtoi(line, &index)) return Error("bad GET");
        return Recall(index);
      }
      case 'h': {  // BINGET
        ASSIGN_OR_RETURN(uint64_t index, ReadUint(1));
        return Recall(index);
      }
      case 'j': {  // LONG_BINGET
        ASSIGN_OR_RETURN(uint64_t index, ReadUint(4));
        return Recall(index);
      }
      default:
        return Error(absl::StrCat("unsupported opcode 0x", absl::Hex(op)));
    }
  }

  const absl::string_view data_;
  const Limits limits_;
  size_t bytes_ = 0;  // Charged so far (see Charge).
  std::unique_ptr<Unpickled> result_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value*> memo_;
};

absl::StatusOr<std::unique_ptr<Unpickled>> Unpickle(absl::string_view data, const Limits& limits) {
  return Unpickler(data, limits).Run();
}

}  // namespace convnext::pickle
