r"""Markdown table (and byte ratios) from the JSON reports of `benchmarks/aot_table.sh`.

  python -m benchmarks.aot_table OUT_DIR
"""

import json
import sys

from etils import epath

MODELS = ("tsn", "gsf", "fstfl")


def load(out_dir: str) -> dict[tuple[str, int, str], dict]:
  """{(generation, frames, model): train-step report} from OUT_DIR/<gen>_<T>f_<model>.json."""
  rows = {}
  for path in sorted(epath.Path(out_dir).glob("*.json")):
    gen, frames, model = path.stem.split("_")
    rows[(gen, int(frames[:-1]), model)] = json.loads(path.read_text())
  return rows


def table(rows: dict[tuple[str, int, str], dict]) -> str:
  lines = ["| chip | frames | model | clips/chip | HBM GiB (state / temp) | TFLOP | GB | "
           "step ms (bound) | clips/s/chip | MFU | bytes vs tsn / gsf |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for (gen, frames, model), report in sorted(rows.items(), key=lambda kv: (
      kv[0][0], kv[0][1], MODELS.index(kv[0][2]))):
    r = report["train"]
    if not r.get("flops_per_step"):
      lines.append(f"| {gen} | {frames} | {model} | {r['clips_per_chip']} | does not fit | "
                   "- | - | - | - | - | - |")
      continue
    ratios = []
    for ref in ("tsn", "gsf"):
      base = rows.get((gen, frames, ref), {}).get("train", {}).get("bytes_per_step")
      earlier = MODELS.index(ref) < MODELS.index(model)
      ratios.append(f"{r['bytes_per_step'] / base:.2f}x" if base and earlier else "-")
    lines.append(
      f"| {gen} | {frames} | {model} | {r['clips_per_chip']} | "
      f"{r['hbm_bytes_per_chip'] / 2**30:.2f} ({r['state_bytes']['total'] / 2**30:.2f} / "
      f"{r['temp_bytes'] / 2**30:.2f}) | {r['flops_per_step'] / 1e12:.3f} | "
      f"{r['bytes_per_step'] / 1e9:.1f} | {1e3 * r['step_seconds_estimate']:.1f} ({r['bound']}) | "
      f"{r['clips_per_sec_per_chip']:.0f} | {100 * r['mfu_estimate']:.1f}% | "
      f"{' / '.join(ratios)} |")
  return "\n".join(lines)


if __name__ == "__main__":
  print(table(load(sys.argv[1])))
