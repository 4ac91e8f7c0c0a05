// Runtime values to template arguments, for both backends (docs/design.md §8: dispatch in three
// levels, dtype, cell, compile-time flags; every switch ends in a thrown error naming the value).
//
// This header is the one list of cells in C++: a new cell is one line in FASTRNN_CELLS below,
// one value of fastrnn::Cell (csrc/fastrnn/fastrnn.h), its CellInfo (gates, cell state), and its
// math once per backend (csrc/cpu/cells.h, csrc/cuda/cell_math.cuh) with the traits the drivers
// read. Drivers never name a cell.
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "fastrnn/fastrnn.h"

namespace fastrnn {

// X(Cell value) for every cell, in code order.
#define FASTRNN_CELLS(X) X(RnnTanh) X(RnnRelu) X(Lstm) X(Gru)

template <Cell kCell>
using CellTag = std::integral_constant<Cell, kCell>;

template <typename T>
struct TypeTag {
  using type = T;
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
