// Runtime values to template arguments, for both backends (docs/design.md §8: dispatch in three
// levels, dtype, cell, compile-time flags; every switch ends in a thrown error naming the value).
//
// The cells are listed once, in fastrnn/cell.h (FASTRNN_CELLS, included from here): a new cell is
// one value of fastrnn::Cell and one X(...) there, its CellInfo (name, gates, cell state), and its
// math once per backend (csrc/cpu/cells.h, csrc/cuda/cell_math.cuh) with the traits the drivers
// read. Drivers never name a cell: they get it from dispatch_cell as a template argument.
//
// Names shared by the backends (the same idea has the same name in csrc/cpu and csrc/cuda):
//   scalar_t           the element type of a template (float, double, __half, ...); never T
//   T                  the sequence length (steps), as in LayerShape::T; t is one step's time
//   CellInfo<kCell>    what a cell is: kName, kGates, kHasCellState (fastrnn/cell.h)
//   CellMath<kCell>    the cell's pointwise math, forward and backward, and the traits the
//                      drivers read (cpu/cells.h, cuda/cell_math.cuh); derives from CellInfo
//   ForwardWorkspace,  the scratch carved out of the caller's workspace by one forward or
//   BackwardWorkspace  backward call (offsets of each region, and the total)
//   ReserveLayout      how the reserve is cut into sections (hs, cs, acts, ms) of per-slot
//                      states and per-step saved activations
//   StateSlots         the storage of the recurrent state across one layer's walk: the
//                      reserve's T+1 slots in training, two ping-pong buffers in inference (CUDA:
//                      h and c together; CPU: one per state). The CPU's slot arithmetic alone
//                      (which slot step t reads and writes) is SlotOrder.
//   xp, hp             the input and recurrent pre-activations (X W_ih^T, h W_hh^T, with biases)
//   dgx, dgh           their gradients (dgh differs from dgx only in CellMath's
//                      kRecurrentGradGate)
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "fastrnn/fastrnn.h"

namespace fastrnn {

// A cell as a value (CellTag<kCell>::value), for generic lambdas.
template <Cell kCell>
using CellTag = std::integral_constant<Cell, kCell>;

// A type as a value, for generic lambdas: fn(TypeTag<float>{}).
template <typename scalar_t>
struct TypeTag {
  using type = scalar_t;
};

// fn(CellTag<cell>{}) with the cell as a compile-time constant.
template <typename Fn>
decltype(auto) dispatch_cell(Cell cell, Fn&& fn) {
  switch (cell) {
#define FASTRNN_CELL_CASE(name) \
    case Cell::name: return std::forward<Fn>(fn)(CellTag<Cell::name>{});
    FASTRNN_CELLS(FASTRNN_CELL_CASE)
#undef FASTRNN_CELL_CASE
  }
  throw std::invalid_argument("fastrnn: unknown cell " + std::to_string(static_cast<int>(cell)));
}

// fn(std::true_type{}) or fn(std::false_type{}): a run-time flag as a compile-time one.
template <typename Fn>
decltype(auto) dispatch_flag(bool flag, Fn&& fn) {
  if (flag) return std::forward<Fn>(fn)(std::true_type{});
  return std::forward<Fn>(fn)(std::false_type{});
}

}  // namespace fastrnn
