"""Accelerator specs: YAML files validated against ``spec.schema.json`` into a HardwareSpec.

A spec is found by name (a ``.yaml`` shipped in this package) or by path. Every error names the
file, the field path, the value and what was expected, on one line.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from planner.errors import MpqError
from planner.userfiles import read_bytes

#: The bit widths mpq supports anywhere (spec precisions, every --bits and --pin-bits option).
SUPPORTED_BITS = tuple(range(2, 17))
#: A spec file larger than this is refused before parsing (bytes).
MAX_SPEC_BYTES = 1 << 20
#: At most this many values in a spec once YAML aliases are expanded (a billion-laughs file has billions).
MAX_SPEC_VALUES = 100_000


def check_bits(bits, what: str) -> int:
    """``bits`` if it is a supported bit width (an int in SUPPORTED_BITS), else an MpqError
    naming ``what`` (e.g. "--pin-bits 0")."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise MpqError(f"{what}: {bits!r} is not a supported bit width; mpq supports the integers "
                       f"{SUPPORTED_BITS[0]} to {SUPPORTED_BITS[-1]}")
    return bits


def _checked_tree(data, where: str):
    """Raise MpqError if the YAML data is cyclic (a recursive anchor), has more than
    MAX_SPEC_VALUES values once aliases are expanded, or holds a non-finite number."""
    count = 0
    stack = [(data, (), frozenset())]
    while stack:
        value, path, above = stack.pop()
        count += 1
        if count > MAX_SPEC_VALUES:
            raise MpqError(f"{where}: more than {MAX_SPEC_VALUES:,} values once YAML aliases are expanded; "
                           "a spec is a short file, write it without nested aliases")
        if isinstance(value, float) and not math.isfinite(value):
            raise MpqError(f"{where}: {'.'.join(map(str, path)) or '(top level)'}: {value}: expected a finite number")
        if isinstance(value, (dict, list)):
            if id(value) in above:
                raise MpqError(f"{where}: {'.'.join(map(str, path)) or '(top level)'}: a YAML alias refers to "
                               "itself (recursive anchor); write the value out")
            inner = above | {id(value)}
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                stack.append((item, path + (key,), inner))
    return data


@dataclass(frozen=True)
class HardwareSpec:
    """An accelerator, with every figure resolved to a number (SI units: s, Hz, bytes, J).

    ``macs_per_cycle[b]`` is per core; ``energy_per_mac_j`` is empty when the spec gives no
    energies. ``sources`` maps a field path (``macs_per_cycle_per_core.8``) to its note and
    ``assumptions`` lists the paths whose figures are not confirmed.
    """

    name: str
    precisions: tuple[int, ...]
    cores: float
    clock_hz: float
    macs_per_cycle: dict[int, float]
    description: str = ""
    launch_overhead_s: float = 0.0
    on_chip_bytes: float | None = None
    per_core_bytes: float | None = None
    offchip_bandwidth: float | None = None
    output_bits: float | None = None
    weights_on_chip: bool = False
    energy_per_mac_j: dict[int, float] = field(default_factory=dict)
    energy_per_byte_onchip_j: float | None = None
    energy_per_byte_offchip_j: float | None = None
    hardware_cost_unit: str = ""
    hardware_cost_per_mac: dict[int, float] = field(default_factory=dict)
    hardware_cost_per_on_chip_byte: float = 0.0
    hardware_cost_fixed: float = 0.0
    pin_first: int | None = 8
    pin_last: int | None = 8
    cost_model: str = "northpole"
    sources: dict[str, str] = field(default_factory=dict)
    assumptions: tuple[str, ...] = ()
    path: str = ""
    sha256: str = ""

    def macs_per_second(self, bits: int) -> float:
        """Peak multiply-accumulates per second at ``bits``: cores x MACs/cycle/core x clock (Hz).
        Raises KeyError when the chip has no MAC units for ``bits``."""
        return self.cores * self.macs_per_cycle[bits] * self.clock_hz

    @property
    def weight_capacity(self) -> float | None:
        """Bytes of on-chip memory for weights when the spec keeps every weight on chip
        (``memory.weights_on_chip``): ``on_chip_bytes``, and at most cores x ``per_core_bytes``
        where per-core memory is given (the weights are spread over the cores' memories).
        None when weights may live off chip."""
        if not self.weights_on_chip:
            return None
        per_core = self.cores * self.per_core_bytes if self.per_core_bytes is not None else None
        return min(c for c in (self.on_chip_bytes, per_core) if c is not None)

    @property
    def has_energy(self) -> bool:
        """Whether the spec gives energy per MAC (then cost models report ``energy_j``)."""
        return bool(self.energy_per_mac_j)

    def hardware_cost(self) -> float | None:
        """What the chip costs to build (in ``hardware_cost_unit``), None where the spec gives no
        ``hardware_cost``: cores x sum over precisions of MACs/cycle/core x cost per MAC unit, plus
        on-chip bytes x cost per byte, plus the fixed part."""
        if not self.hardware_cost_per_mac:
            return None
        macs = sum(self.macs_per_cycle[b] * self.hardware_cost_per_mac[b] for b in self.precisions)
        return self.cores * macs + (self.on_chip_bytes or 0.0) * self.hardware_cost_per_on_chip_byte + self.hardware_cost_fixed


def shipped_specs() -> list[str]:
    """Names of the specs that ship with mpq."""
    return sorted(p.name[:-5] for p in resources.files("hw").iterdir() if p.name.endswith(".yaml"))


@cache
def _schema() -> dict:
    return json.loads(resources.files("hw").joinpath("spec.schema.json").read_text())


def load_spec(name_or_path: str | Path) -> HardwareSpec:
    """Load a spec by shipped name (``northpole``) or by path; raises MpqError if it is invalid."""
    text = str(name_or_path)
    path = Path(text)
    if not path.exists() and "/" not in text and not text.endswith((".yaml", ".yml")):
        if text not in shipped_specs():
            raise MpqError(f"no hardware spec named '{text}'; shipped specs: {', '.join(shipped_specs())}, "
                           "or give the path of a YAML file")
        path = Path(str(resources.files("hw").joinpath(text + ".yaml")))
    raw = read_bytes(path, "spec", MAX_SPEC_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MpqError(f"{path}: not a text file (not UTF-8); a spec is a YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise MpqError(f"{path}: not valid YAML{where} ({problem})") from None
    except RecursionError:
        raise MpqError(f"{path}: YAML nested too deeply for a spec") from None
    return parse_spec(data, str(path), hashlib.sha256(raw).hexdigest())


def parse_spec(data, where: str, sha256: str = "") -> HardwareSpec:
    """Validate a spec's data (as loaded from YAML) and resolve its figures."""
    if not isinstance(data, dict):
        raise MpqError(f"{where}: a spec is a mapping of fields (name, precisions, cores, ...), "
                       f"got {type(data).__name__}")
    _checked_tree(data, where)
    as_json = json.loads(json.dumps(data, default=str))  # YAML's integer keys become strings
    errors = sorted(jsonschema.Draft202012Validator(_schema()).iter_errors(as_json),
                    key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        raise MpqError(_describe(errors[0], where, len(errors)))
    sources: dict[str, str] = {}
    assumptions: list[str] = []

    def figure(value, path: str) -> float:
        if isinstance(value, dict):
            if "source" in value:
                sources[path] = value["source"]
            if value.get("assumption"):
                assumptions.append(path)
            return float(value["value"])
        return float(value)

    def per_precision(table: dict, path: str) -> dict[int, float]:  # one entry for every precision, no other
        values = {int(b): figure(v, f"{path}.{b}") for b, v in sorted(table.items(), key=lambda kv: int(kv[0]))}
        _require_each_precision(precisions, values, path, where)
        return values

    precisions = tuple(sorted(check_bits(b, f"{where}: precisions") for b in data["precisions"]))
    for end in ("first", "last"):
        if (data.get("pins") or {}).get(end) is not None:
            check_bits(data["pins"][end], f"{where}: pins.{end}")
    throughput = per_precision(data["macs_per_cycle_per_core"], "macs_per_cycle_per_core")
    memory = data.get("memory") or {}
    energy = data.get("energy") or {}
    energy_per_mac = per_precision(energy["per_mac_j"], "energy.per_mac_j") if energy else {}
    pins = data.get("pins") or {}
    silicon = data.get("hardware_cost") or {}
    cost_per_mac = per_precision(silicon["per_mac_unit"], "hardware_cost.per_mac_unit") if silicon else {}
    if "per_on_chip_byte" in silicon and "on_chip_bytes" not in memory:
        raise MpqError(f"{where}: hardware_cost.per_on_chip_byte: needs memory.on_chip_bytes (how many bytes to cost)")

    def optional(section: dict, key: str, prefix: str) -> float | None:
        return figure(section[key], f"{prefix}.{key}") if key in section else None

    if memory.get("weights_on_chip") and "on_chip_bytes" not in memory and "per_core_bytes" not in memory:
        raise MpqError(f"{where}: memory.weights_on_chip: true needs memory.on_chip_bytes or memory.per_core_bytes "
                       "(how much on-chip memory holds the weights)")
    cores = figure(data["cores"], "cores")
    if cores != int(cores):
        raise MpqError(f"{where}: cores: {cores} is not a whole number of cores")
    return HardwareSpec(
        name=data["name"], description=" ".join(str(data.get("description", "")).split()), precisions=precisions,
        cores=cores, clock_hz=figure(data["clock_hz"], "clock_hz"), macs_per_cycle=throughput,
        launch_overhead_s=figure(data["launch_overhead_s"], "launch_overhead_s") if "launch_overhead_s" in data else 0.0,
        on_chip_bytes=optional(memory, "on_chip_bytes", "memory"),
        per_core_bytes=optional(memory, "per_core_bytes", "memory"),
        offchip_bandwidth=optional(memory, "offchip_bandwidth_bytes_per_s", "memory"),
        output_bits=optional(memory, "output_bits", "memory"),
        weights_on_chip=bool(memory.get("weights_on_chip", False)),
        energy_per_mac_j=energy_per_mac,
        energy_per_byte_onchip_j=optional(energy, "per_byte_onchip_j", "energy"),
        energy_per_byte_offchip_j=optional(energy, "per_byte_offchip_j", "energy"),
        hardware_cost_unit=silicon.get("unit", ""), hardware_cost_per_mac=cost_per_mac,
        hardware_cost_per_on_chip_byte=optional(silicon, "per_on_chip_byte", "hardware_cost") or 0.0,
        hardware_cost_fixed=optional(silicon, "fixed", "hardware_cost") or 0.0,
        pin_first=pins.get("first", 8), pin_last=pins.get("last", 8), cost_model=data.get("cost_model", "northpole"),
        sources=sources, assumptions=tuple(assumptions), path=where, sha256=sha256,
    )


def _require_each_precision(precisions, table: dict[int, float], field_path: str, where: str) -> None:
    missing = [b for b in precisions if b not in table]
    if missing:
        raise MpqError(f"{where}: {field_path}: no entry for {missing[0]} bits; every precision in "
                       f"precisions {list(precisions)} needs one")
    extra = [b for b in table if b not in precisions]
    if extra:
        raise MpqError(f"{where}: {field_path}.{extra[0]}: {extra[0]} bits is not in precisions "
                       f"{list(precisions)}; add it there or remove this entry")


# what a schema keyword expects, by keyword, in words ({} is the keyword's value)
_EXPECTED = {
    "exclusiveMinimum": "expected a number > {}",
    "minimum": "expected a number >= {}",
    "pattern": "expected text matching {}",
    "const": "expected {!r}",
    "propertyNames": "expected bit widths (1, 2, 4, 8, ...) as keys",
}


def _describe(error: jsonschema.ValidationError, where: str, count: int) -> str:
    """One line: file, field path, value, what was expected."""
    if error.validator == "oneOf" and error.context:  # a figure: explain the alternative it resembles
        wanted = "object" if isinstance(error.instance, dict) else "number"
        alternatives = [e for e in error.context if e.schema_path and e.schema_path[0] == (0 if wanted == "number" else 1)]
        error = min(alternatives or error.context, key=lambda e: len(e.absolute_path), default=error)
        if wanted == "number" and error.validator == "type":
            error.validator_value = "a number or {value, source}"
    path = ".".join(str(p) for p in error.absolute_path)
    more = f" (and {count - 1} more problem{'s' if count > 2 else ''})" if count > 1 else ""
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return f"{where}: {path + '.' if path else ''}{missing}: missing required field{more}"
    if error.validator == "additionalProperties":
        unknown = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return (f"{where}: {path + '.' if path else ''}{unknown[0] if unknown else '?'}: unknown field; "
                f"expected one of {', '.join(sorted(error.schema.get('properties', {})))}{more}")
    value = "a mapping" if isinstance(error.instance, dict) else json.dumps(error.instance)
    v = error.validator_value
    if error.validator == "type":
        expected = f"expected {v if isinstance(v, str) else ' or '.join(v)}"
    elif error.validator in _EXPECTED:
        expected = _EXPECTED[error.validator].format(v)
    else:
        expected = error.message
    return f"{where}: {path or '(top level)'}: {value}: {expected}{more}"
