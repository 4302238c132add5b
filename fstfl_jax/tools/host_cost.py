"""FLOPs and bytes of a compiled step whose backend has no cost analysis (described GPUs).

The CUDA plugin's `compiled.cost_analysis()` (and `lowered.cost_analysis()`) are None for a
program compiled for described GPUs, and its optimised program calls cuDNN/cuBLAS as custom
calls, which XLA's generic `HloCostAnalysis` counts as -1 FLOPs and -1 bytes. `host_cost_analysis`
counts on the host instead (see its docstring for what exactly), and `HostCostCompiled` gives the
result the interface of a compiled step, so `fstfl_jax.tools.aot` analyses both alike.
"""

import dataclasses
import re
from typing import Any

import jax


# Bits per element of an HLO element type: the number in its name ("bf16", "f8e4m3fn", "c64").
_NO_NUMBER_BITS = {"pred": 8, "token": 0}
_HLO_ARRAY = re.compile(r"([a-z][a-z0-9]*)\[([0-9,]*)\]")


def _hlo_shape_bytes(shape: str) -> int:
  """Bytes of the arrays in an HLO shape's text ("(bf16[4,56,56,64]{3,2,1,0}, u8[0]{0})")."""
  total = 0
  for dtype, dims in _HLO_ARRAY.findall(shape):
    bits = _NO_NUMBER_BITS.get(dtype)
    if bits is None:
      bits = int(re.match(r"[a-z]+?(\d+)", dtype)[1])
    elements = 1
    for d in filter(None, dims.split(",")):
      elements *= int(d)
    total += (elements * bits + 7) // 8
  return total


def _result_shape(instruction_text: str) -> str:
  """"%x = (f32[2], u8[0]) custom-call(...)" -> "(f32[2], u8[0])": the text after " = " up to
  the opcode (a tuple shape is the balanced parentheses)."""
  rest = instruction_text.split(" = ", 1)[1]
  if not rest.startswith("("):
    return rest.split(" ", 1)[0]
  depth = 0
  for i, c in enumerate(rest):
    depth += {"(": 1, ")": -1}.get(c, 0)
    if depth == 0:
      return rest[:i + 1]
  return rest


def library_call_bytes(module: Any) -> tuple[dict[str, int], int]:
  """({custom call target: calls}, bytes the calls read and write) in an optimised HLO module,
  fusion bodies aside.

  On GPU the custom calls are the library kernels (cuDNN convolutions, cuBLAS matmuls); each is
  counted as reading its operands and writing its results once from/to HBM.
  """
  from jax._src.lib import hlo  # pylint: disable=g-import-not-at-top
  computations = list(module.computations())
  fused = set()  # Computations inlined in a fusion kernel: their instructions are no kernels.
  for computation in computations:
    for instruction in computation.instructions():
      if instruction.opcode == hlo.HloOpcode.kFusion:
        fused.update(re.findall(r"calls=%?([\w.\-]+)", instruction.to_string()))
  calls, total = {}, 0
  for computation in computations:
    if computation.name in fused:
      continue
    for instruction in computation.instructions():
      if instruction.opcode != hlo.HloOpcode.kCustomCall:
        continue
      text = instruction.to_string()
      target = re.search(r'custom_call_target="([^"]*)"', text)
      target = target[1] if target else "?"
      calls[target] = calls.get(target, 0) + 1
      total += _hlo_shape_bytes(_result_shape(text))
      total += sum(_hlo_shape_bytes(_result_shape(operand.to_string()))
                   for operand in instruction.operands())
  return calls, total


def host_cost_analysis(lowered: Any, compiled: Any, num_devices: int) -> dict[str, Any]:
  """Per-device FLOPs and bytes of a step whose backend gives no cost analysis, counted on the
  host by XLA's generic `HloCostAnalysis` (what `Lowered.cost_analysis` runs for in-process
  backends), through the CPU client.

  The CUDA plugin's `compiled.cost_analysis()` (and `lowered.cost_analysis()`) are None for a
  program compiled for described GPUs, and its optimised program calls cuDNN/cuBLAS as custom
  calls, which `HloCostAnalysis` counts as -1 FLOPs and -1 bytes. Hence:
    flops: of the lowered program (global batch, before partitioning and optimisation: every
      convolution and matmul still an HLO op, counted as 2 x MACs), divided by the devices. Exact
      for the data-parallel work; the little that every device repeats (the optimizer update
      on replicated parameters) is divided too, so slightly undercounted.
    bytes accessed: of one device's compiled program (after fusion: each fusion kernel reads its
      operands and writes its results), plus each library call's operands and results
      (`library_call_bytes`), with the -1 of each call undone.
  As in the compilers' own analyses, a loop body counts once (e.g. the `einsum` correlation's
  scan over displacements; GPUs resolve impl="auto" to `allpairs`, which has no loop).
  """
  from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
  cpu = jax.devices("cpu")[0].client
  hlo_module = lowered.compiler_ir("hlo").as_hlo_module()
  global_cost = _jax.hlo_module_cost_analysis(cpu, hlo_module)
  device_module = compiled.runtime_executable().hlo_modules()[0]
  device_cost = _jax.hlo_module_cost_analysis(cpu, device_module)
  calls, call_bytes = library_call_bytes(device_module)
  return {"flops": float(global_cost["flops"]) / num_devices,
          "bytes accessed": float(device_cost["bytes accessed"]) + sum(calls.values()) + call_bytes,
          "library_calls": calls, "library_call_bytes": call_bytes}


@dataclasses.dataclass
class HostCostCompiled:
  """A compiled step with `host_cost_analysis` for its backend's missing cost analysis."""
  compiled: Any
  cost: dict[str, Any]
  cost_source = ("flops: lowered program / devices; bytes: compiled per-device program + "
                 "library calls' operands and results (XLA HloCostAnalysis on the host)")

  def memory_analysis(self) -> Any:
    return self.compiled.memory_analysis()

  def cost_analysis(self) -> dict[str, Any]:
    return self.cost

  def as_text(self) -> str:
    return self.compiled.as_text()
