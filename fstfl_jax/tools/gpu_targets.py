"""Described NVIDIA GPUs for compiling without one: XLA `GpuTargetConfigProto` text per GPU kind.

With the CUDA plugin wheels (`jax-cuda12-plugin`, `jax-cuda12-pjrt`) installed, XLA compiles
for a GPU it is only told about: `jax.experimental.topologies.get_topology_desc(platform="cuda",
target_config=target_config(spec), topology="1xHOSTSxDEVICES")` returns described devices to
build a mesh from; `fstfl_jax.tools.aot` compiles the train and eval steps on them.

The proto's field names are XLA's (`xla/stream_executor/device_description.proto`:
`GpuTargetConfigProto`, `GpuDeviceInfoProto`). The device facts come from NVIDIA's public
documents, cited per number below:
  [H100-WP] NVIDIA H100 Tensor Core GPU Architecture whitepaper (2022), its A100/H100
            comparison table (H100 SXM5 column).
  [H100-DS] NVIDIA H100 Tensor Core GPU datasheet (H100 SXM column).
  [A100-WP] NVIDIA A100 Tensor Core GPU Architecture whitepaper (2020), its V100/A100
            comparison table (A100 SXM4 column).
  [A100-DS] NVIDIA A100 Tensor Core GPU datasheet (A100 40GB / 80GB SXM columns).
  [CUDA-PG] CUDA C++ Programming Guide, "Technical Specifications per Compute Capability"
            (limits of compute capability 8.0 and 9.0).
  [DRIVER]  What the CUDA driver reports on the real device (cudaDeviceProp): the usable memory
            (less than the 40/80 GiB of HBM: the driver keeps some) and the maximum SM clock,
            as recorded in XLA's own target specs of these GPUs
            (xla/backends/gpu/target_config/specs/{h100_sxm,a100_sxm_40,a100_sxm_80}.txtpb).
This module imports no JAX: the text is only parsed by the plugin.
"""

import dataclasses
import re

KIB = 1024
MIB = 1024 * KIB


@dataclasses.dataclass(frozen=True)
class GpuSpec:
  """One GPU model's facts: what XLA's GPU compiler needs, and the roofline's peaks."""
  description: str            # The name the driver gives the device (XLA: device_description_str).
  compute_capability: tuple[int, int]
  # XLA's CudaComputeCapabilityProto.feature_extension: how XLA describes the real device.
  # Hopper is "sm_90a" there (ACCELERATED_FEATURES: the arch-specific instructions such as wgmma
  # that only that exact architecture has); Ampere has no such variant (NONE).
  feature_extension: str
  sm_count: int
  fp32_cores_per_sm: int      # XLA: fpus_per_core.
  clock_ghz: float            # Maximum SM clock.
  shared_memory_per_sm: int   # Bytes. XLA: shared_memory_per_core.
  shared_memory_per_block_optin: int  # Bytes a block gets when it opts in.
  l2_cache_bytes: int
  memory_bandwidth: float     # HBM bytes/s.
  device_memory_bytes: int    # HBM bytes the driver reports as usable.
  peak_bf16_flops: float      # Dense (no sparsity) bf16 tensor-core FLOP/s, for the roofline.
  # Limits shared by compute capabilities 8.0 and 9.0 [CUDA-PG].
  shared_memory_per_block: int = 48 * KIB  # Without opting in.
  threads_per_block: int = 1024
  threads_per_sm: int = 2048
  threads_per_warp: int = 32
  registers_per_sm: int = 64 * KIB         # 32-bit registers.
  registers_per_block: int = 64 * KIB
  grid_dim_limits: tuple[int, int, int] = (2**31 - 1, 65535, 65535)
  block_dim_limits: tuple[int, int, int] = (1024, 1024, 64)


GPUS = {
  "h100": GpuSpec(
    description="NVIDIA H100 80GB HBM3",
    compute_capability=(9, 0),              # [CUDA-PG]
    feature_extension="ACCELERATED_FEATURES",  # [DRIVER] sm_90a.
    sm_count=132,                           # [H100-WP] H100 SXM5.
    fp32_cores_per_sm=128,                  # [H100-WP]
    clock_ghz=1.98,                         # [DRIVER] 1980000 kHz.
    shared_memory_per_sm=228 * KIB,         # [CUDA-PG] cc 9.0: 228 KB per SM.
    shared_memory_per_block_optin=227 * KIB,  # [CUDA-PG] cc 9.0: 227 KB per block.
    l2_cache_bytes=50 * MIB,                # [H100-WP] 50 MB.
    memory_bandwidth=3.35e12,               # [H100-DS] 3.35 TB/s HBM3.
    device_memory_bytes=84_942_979_072,     # [DRIVER] 79.1 GiB of the 80 GB.
    peak_bf16_flops=989e12,                 # [H100-DS] 1,979 TFLOPS with sparsity, half dense.
  ),
  "a100-80gb": GpuSpec(
    description="NVIDIA A100-SXM4-80GB",
    compute_capability=(8, 0),              # [CUDA-PG]
    feature_extension="NONE",               # [DRIVER] sm_80.
    sm_count=108,                           # [A100-WP]
    fp32_cores_per_sm=64,                   # [A100-WP]
    clock_ghz=1.41,                         # [A100-WP] boost clock 1410 MHz.
    shared_memory_per_sm=164 * KIB,         # [CUDA-PG] cc 8.0: 164 KB per SM.
    shared_memory_per_block_optin=163 * KIB,  # [CUDA-PG] cc 8.0: 163 KB per block.
    l2_cache_bytes=40 * MIB,                # [A100-WP] 40 MB.
    memory_bandwidth=2.039e12,              # [A100-DS] 2,039 GB/s HBM2e.
    device_memory_bytes=85_100_068_864,     # [DRIVER] 79.3 GiB of the 80 GB.
    peak_bf16_flops=312e12,                 # [A100-DS] 624 TFLOPS with sparsity, half dense.
  ),
  "a100-40gb": GpuSpec(
    description="NVIDIA A100-SXM4-40GB",
    compute_capability=(8, 0),
    feature_extension="NONE",
    sm_count=108,
    fp32_cores_per_sm=64,
    clock_ghz=1.41,
    shared_memory_per_sm=164 * KIB,
    shared_memory_per_block_optin=163 * KIB,
    l2_cache_bytes=40 * MIB,
    memory_bandwidth=1.555e12,              # [A100-DS] 1,555 GB/s HBM2.
    device_memory_bytes=42_331_013_120,     # [DRIVER] 39.4 GiB of the 40 GB.
    peak_bf16_flops=312e12,
  ),
}

# What the CUDA 12 plugin of jax 0.10.2 was built against (`jax_cuda12_plugin._versions`:
# cudnn_build_version() == 90800, cuda_runtime_build_version() == 12090), which is also the
# oldest cuDNN and CUDA runtime it runs with: a GPU host with that plugin has these or newer, so
# the compiler assumes no library feature that such a host may lack.
CUDNN_VERSION = (9, 8, 0)
CUDA_RUNTIME_VERSION = (12, 9, 0)


def target_config(spec: GpuSpec, cudnn: tuple[int, int, int] = CUDNN_VERSION,
                  cuda_runtime: tuple[int, int, int] = CUDA_RUNTIME_VERSION) -> str:
  """`GpuTargetConfigProto` in protobuf text format, for `get_topology_desc(target_config=)`."""
  cc_major, cc_minor = spec.compute_capability
  grid_x, grid_y, grid_z = spec.grid_dim_limits
  block_x, block_y, block_z = spec.block_dim_limits
  device = dict(
    threads_per_block_limit=spec.threads_per_block,
    threads_per_warp=spec.threads_per_warp,
    shared_memory_per_block=spec.shared_memory_per_block,
    shared_memory_per_core=spec.shared_memory_per_sm,
    threads_per_core_limit=spec.threads_per_sm,
    core_count=spec.sm_count,
    fpus_per_core=spec.fp32_cores_per_sm,
    block_dim_limit_x=grid_x,  # XLA's "block dim" limits are the grid's (blocks per grid).
    block_dim_limit_y=grid_y,
    block_dim_limit_z=grid_z,
    thread_dim_limit_x=block_x,  # ... and its "thread dim" limits a block's (threads per block).
    thread_dim_limit_y=block_y,
    thread_dim_limit_z=block_z,
    memory_bandwidth=int(spec.memory_bandwidth),
    l2_cache_size=spec.l2_cache_bytes,
    clock_rate_ghz=spec.clock_ghz,
    device_memory_size=spec.device_memory_bytes,
    shared_memory_per_block_optin=spec.shared_memory_per_block_optin,
    registers_per_core_limit=spec.registers_per_sm,
    registers_per_block_limit=spec.registers_per_block,
  )
  lines = ["gpu_device_info {"]
  lines += [f"  {key}: {value}" for key, value in device.items()]
  lines += [f"  cuda_compute_capability {{ major: {cc_major} minor: {cc_minor} "
            f"feature_extension: {spec.feature_extension} }}", "}",
            'platform_name: "CUDA"',
            "dnn_version_info {{ major: {} minor: {} patch: {} }}".format(*cudnn),
            "runtime_version {{ major: {} minor: {} patch: {} }}".format(*cuda_runtime),
            f'device_description_str: "{spec.description}"']
  return "\n".join(lines) + "\n"


def parse_topology(topology: str) -> tuple[str, int, int] | None:
  """"h100:2x8" -> ("h100", 2 hosts, 8 GPUs per host); None when it names no GPU kind here.

  Raises ValueError for a GPU kind with a malformed shape.
  """
  kind, _, shape = topology.partition(":")
  if kind not in GPUS:
    return None
  match = re.fullmatch(r"(\d+)x(\d+)", shape)
  if not match or min(int(v) for v in match.groups()) < 1:
    raise ValueError(f"GPU topology {topology!r}: expected KIND:HOSTSxGPUS_PER_HOST, e.g. "
                     f"'{kind}:1x8' (one host with 8 GPUs)")
  return kind, int(match[1]), int(match[2])


def cuda_topology_name(hosts: int, devices_per_host: int) -> str:
  """The CUDA plugin's topology string: slices x hosts per slice x devices per host (1 slice)."""
  return f"1x{hosts}x{devices_per_host}"
