// The recurrent cells: the one list of them in C++ and what each one is, for every backend.
//
// A cell's code (its fastrnn::Cell value) is the number the Python side passes
// (python/fastrnn/_cells.py holds the same list; _core.CELL_CODES is exported from this one and a
// test checks that the two agree). CellInfo<kCell> is what a cell *is* -- its name, its gates,
// whether it carries a cell state or takes a projection -- and every backend's math struct
// (cpu/cells.h, cuda/cell_math.cuh) derives from it; num_gates(), has_cell_state(),
// can_project() and cell_name() below are the same facts for a cell known at run time only.
// common/dispatch.h turns a run-time cell into CellInfo's template argument.
//
// Adding a cell: one value of Cell, one X(...) in FASTRNN_CELLS, one CellInfo below, then its
// math and traits once per backend (docs/design.md §9).
#pragma once

#include <stdexcept>
#include <string>

namespace fastrnn {

enum class Cell : int { RnnTanh = 0, RnnRelu = 1, Lstm = 2, Gru = 3 };

// X(Cell value) for every cell, in code order (codes 0, 1, 2, ...: checked below).
#define FASTRNN_CELLS(X) X(RnnTanh) X(RnnRelu) X(Lstm) X(Gru)

template <Cell kCell>
struct CellInfo;

// kName: the name the Python API takes (_cells.CellSpec.mode).
// kGates: G, the gates per hidden unit: the weights have G*H rows, gate g in rows [g*H, (g+1)*H).
// kHasCellState: the cell carries a cell state c besides h (LSTM): c0, c_n, dc0 exist.
// kCanProject: the layer may take a projection W_hr (P, H) of its output (torch.nn.LSTM's
//   proj_size), so that the state h has R = P < H units.
// kScalesRecurrentGate: the last gate's recurrent pre-activation is scaled by another gate (GRU's
//   n = tanh(W_in x + b_in + r * (W_hn h + b_hn))), so its gradient on the recurrent side (W_hh,
//   b_hh) differs from the input side's.
template <>
struct CellInfo<Cell::RnnTanh> {
  static constexpr const char* kName = "rnn_tanh";
  static constexpr int kGates = 1;
  static constexpr bool kHasCellState = false;
  static constexpr bool kCanProject = false;
  static constexpr bool kScalesRecurrentGate = false;
};
template <>
struct CellInfo<Cell::RnnRelu> {
  static constexpr const char* kName = "rnn_relu";
  static constexpr int kGates = 1;
  static constexpr bool kHasCellState = false;
  static constexpr bool kCanProject = false;
  static constexpr bool kScalesRecurrentGate = false;
};
// Gates i, f, g, o (PyTorch's order).
template <>
struct CellInfo<Cell::Lstm> {
  static constexpr const char* kName = "lstm";
  static constexpr int kGates = 4;
  static constexpr bool kHasCellState = true;
  static constexpr bool kCanProject = true;
  static constexpr bool kScalesRecurrentGate = false;
};
// Gates r, z, n (PyTorch's order).
template <>
struct CellInfo<Cell::Gru> {
  static constexpr const char* kName = "gru";
  static constexpr int kGates = 3;
  static constexpr bool kHasCellState = false;
  static constexpr bool kCanProject = false;
  static constexpr bool kScalesRecurrentGate = true;
};

namespace cell_list {

// The number of cells, and the check that FASTRNN_CELLS lists them in code order.
#define FASTRNN_CELL_COUNT(name) +1
inline constexpr int kCount = 0 FASTRNN_CELLS(FASTRNN_CELL_COUNT);
#undef FASTRNN_CELL_COUNT
constexpr bool in_code_order() {
  int code = 0;
#define FASTRNN_CELL_IN_ORDER(name) \
  if (static_cast<int>(Cell::name) != code++) return false;
  FASTRNN_CELLS(FASTRNN_CELL_IN_ORDER)
#undef FASTRNN_CELL_IN_ORDER
  return true;
}
static_assert(in_code_order(), "FASTRNN_CELLS must list the cells in code order 0, 1, 2, ...");

// fn(CellInfo<cell>{}) for a cell known at run time; an unknown value throws, naming it.
// (common/dispatch.h's dispatch_cell is the same for any template; this one is constexpr.)
template <typename Fn>
constexpr auto with_info(Cell cell, Fn fn) {
  switch (cell) {
#define FASTRNN_CELL_INFO_CASE(name) \
    case Cell::name: return fn(CellInfo<Cell::name>{});
    FASTRNN_CELLS(FASTRNN_CELL_INFO_CASE)
#undef FASTRNN_CELL_INFO_CASE
  }
  throw std::invalid_argument("fastrnn: unknown cell " + std::to_string(static_cast<int>(cell)));
}

}  // namespace cell_list

// CellInfo's facts for a cell known at run time.
constexpr int num_gates(Cell cell) {
  return cell_list::with_info(cell, [](auto info) { return decltype(info)::kGates; });
}
constexpr bool has_cell_state(Cell cell) {
  return cell_list::with_info(cell, [](auto info) { return decltype(info)::kHasCellState; });
}
constexpr bool can_project(Cell cell) {
  return cell_list::with_info(cell, [](auto info) { return decltype(info)::kCanProject; });
}
constexpr bool scales_recurrent_gate(Cell cell) {
  return cell_list::with_info(cell, [](auto info) { return decltype(info)::kScalesRecurrentGate; });
}
constexpr const char* cell_name(Cell cell) {
  return cell_list::with_info(cell, [](auto info) { return decltype(info)::kName; });
}

}  // namespace fastrnn
