// What the binding files share: numpy array types, shapes and the argument-shape checker.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace strata::py_bind {

namespace py = pybind11;

// A C-contiguous array of T; any other array (or a list) is converted to one.
template <class T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;
using F32 = Arr<float>;
using I32 = Arr<int32_t>;

template <class T = float>
Arr<T> make(const std::vector<long>& shape) {
    return Arr<T>(std::vector<py::ssize_t>(shape.begin(), shape.end()));
}
inline std::vector<long> shape_of(const py::array& a) { return std::vector<long>(a.shape(), a.shape() + a.ndim()); }

inline std::string shape_str(const std::vector<long>& v) {
    std::string r = "(";
    for (size_t i = 0; i < v.size(); i++) r += (i ? ", " : "") + std::to_string(v[i]);
    return r + (v.size() == 1 ? ",)" : ")");
}

// A Python value (None, bool, int, float, str, list, dict) as JSON.
nlohmann::json to_json(const py::handle& h);
// JSON as the Python value it spells.
py::object from_json(const nlohmann::json& j);

// The shapes of one binding's arguments, by name: each array is matched against a list of axis names,
// a name seen before must have the size it had, and "*N" as the first name matches any number of
// leading axes (none included) whose product is N. A mismatch is a strata.Error (a ValueError) that
// names the op, the argument, the expected shape and the one it got, so a wrong shape never reaches
// an op (whose pointers would read past the array, or garbage).
class Shapes {
  public:
    explicit Shapes(std::string op) : op_(std::move(op)) {}
    Shapes& operator()(const py::array& a, const std::string& arg, const std::vector<std::string>& names);
    long operator[](const std::string& name) const { return dims_.at(name); }
    const std::string& op() const { return op_; }
    // An extra condition on the sizes bound so far, with its message.
    void require(bool cond, const std::string& what) const {
        if (!cond) throw Error(op_ + ": " + what);
    }

  private:
    // a size written as digits ("3"), not a name
    static bool literal(const std::string& name) {
        return std::all_of(name.begin(), name.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); });
    }
    bool match(const std::string& name, long n);
    std::string expected(const std::vector<std::string>& names) const;
    std::string op_;
    std::map<std::string, long> dims_;
};

// Every token id in [0, V), or an Error naming the argument and the first bad index.
void check_tokens(const I32& tokens, long V, const std::string& op, const char* arg);

void bind_ops(py::module_& m);    // ops.cpp: strata.ops
void bind_model(py::module_& m);  // model.cpp: Model, Tokenizer, load, generation
void bind_train(py::module_& m);  // train.cpp: the trainer

}  // namespace strata::py_bind
