"""Upstream MACE's read-only analysis on `MaterialDatabase`: filters, missing data, summaries."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

#: Properties a completed calculation of each type is expected to yield (upstream's lists).
EXPECTED_PROPERTIES: dict[str, tuple[str, ...]] = {
    "OPT": ("total_energy", "final_a", "final_b", "final_c", "final_alpha", "final_beta", "final_gamma",
            "optimization_cycles", "max_gradient", "rms_gradient", "density"),
    "SP": ("total_energy", "band_gap", "fermi_energy", "indirect_band_gap", "direct_band_gap", "homo_energy",
           "lumo_energy", "vbm_energy", "cbm_energy"),
    "FREQ": ("freq_n_modes", "freq_min", "freq_max", "freq_negative_count", "freq_zero_point_energy",
             "freq_thermal_energy", "freq_entropy"),
    "BAND": ("band_n_kpoints", "band_n_bands", "band_gap_from_band", "band_fermi_energy"),
    "DOSS": ("dos_n_points", "dos_energy_range", "dos_gap", "dos_fermi_energy", "dos_n_electrons"),
    "TRANSPORT": ("transport_seebeck_300k", "transport_conductivity_300k", "transport_power_factor_300k",
                  "transport_thermal_conductivity_300k"),
    "CHARGE+POTENTIAL": ("charge_min", "charge_max", "potential_min", "potential_max", "charge_sum",
                         "potential_average"),
}  # fmt: skip


class AnalysisMixin:
    """Needs `get_all_materials`, `get_material`, `get_all_properties`, `get_material_properties`,
    `get_material_calculations`, `get_calculations_by_status` (MaterialDatabase)."""

    get_all_materials: Any
    get_material: Any
    get_all_properties: Any
    get_material_properties: Any
    get_material_calculations: Any
    get_calculations_by_status: Any

    def _latest_properties(self) -> dict[str, dict[str, Any]]:
        """material id -> {property name: its latest value} (materials with properties only)."""
        latest: dict[str, dict[str, tuple[int, Any]]] = {}
        for p in self.get_all_properties():
            mine = latest.setdefault(p["material_id"], {})
            if p["property_name"] not in mine or p["property_id"] > mine[p["property_name"]][0]:
                mine[p["property_name"]] = (p["property_id"], p["property_value"])
        return {mid: {name: value for name, (_, value) in props.items()} for mid, props in latest.items()}

    def filter_materials_by_properties(self, filter_strings: Sequence[str], logic: str = "AND") -> list[dict[str, Any]]:
        """Materials whose property values pass `["band_gap > 3.0", ...]` combined with AND/OR
        (properties only, as upstream: a material without properties never matches)."""
        from . import filters  # lazy: only filtering parses expressions; an element's database never does

        parsed = [filters.parse_simple(s) for s in filter_strings]
        props = self._latest_properties()
        return [
            m for m in self.get_all_materials()
            if m["material_id"] in props and filters.match_simple(props[m["material_id"]], parsed, logic)
        ]  # fmt: skip

    def filter_materials_advanced(self, expression: str) -> list[dict[str, Any]]:
        """Materials matching an expression with AND/OR/NOT, parentheses, LIKE, IN, IS NULL."""
        from . import filters  # lazy: as above

        predicate = filters.parse_advanced(expression)
        props = self._latest_properties()
        return [m for m in self.get_all_materials() if predicate({**props.get(m["material_id"], {}), **m})]

    def filter_properties(self, filter_strings: Sequence[str], material_id: str | None = None) -> list[dict[str, Any]]:
        """Property rows passing any of the filters whose name is theirs (OR, as upstream)."""
        from . import filters  # lazy: as above

        parsed = [filters.parse_simple(s) for s in filter_strings]
        rows = self.get_material_properties(material_id) if material_id else self.get_all_properties()
        return [
            p for p in rows
            if any(n == p["property_name"] and filters.compare(p["property_value"], op, v) for n, op, v in parsed)
        ]  # fmt: skip

    def analyze_missing_data(
        self, material_ids: Sequence[str] | None = None, target_properties: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Which expected properties each material lacks, given its completed calculation types,
        and which calculations would provide them (upstream's result keys)."""
        if material_ids:
            materials = [m for m in (self.get_material(mid) for mid in material_ids) if m]
        else:
            materials = self.get_all_materials()
        if not materials:
            return {"error": "No materials found to analyze"}
        result: dict[str, Any] = {
            "summary": {"total_materials": len(materials), "materials_analyzed": []},
            "missing_by_material": {},
            "missing_by_property": defaultdict(list),
            "recommendations": {},
            "completeness_scores": {},
        }
        for material in materials:
            mid = material["material_id"]
            result["summary"]["materials_analyzed"].append(mid)
            have = {p["property_name"] for p in self.get_material_properties(mid)}
            done = {c["calc_type"] for c in self.get_material_calculations(mid) if c.get("status") == "completed"}
            expected = {p for t in done for p in EXPECTED_PROPERTIES.get(t, ())}
            if target_properties:
                expected &= set(target_properties)
            missing = expected - have
            by_type = {t: sorted(missing & set(props)) for t, props in EXPECTED_PROPERTIES.items() if missing & set(props)}
            result["missing_by_material"][mid] = {
                "existing_properties": sorted(have),
                "completed_calculations": sorted(done),
                "expected_properties": sorted(expected),
                "missing_properties": sorted(missing),
                "missing_by_calc_type": by_type,
                "suggested_calculations": sorted(t for t in by_type if t not in done),
            }
            for prop in missing:
                result["missing_by_property"][prop].append(mid)
            result["completeness_scores"][mid] = len(expected & have) / len(expected) if expected else 1.0
            if missing:
                result["recommendations"][mid] = sorted(by_type)
        result["missing_by_property"] = dict(result["missing_by_property"])
        scores = result["completeness_scores"].values()
        result["summary"]["average_completeness"] = sum(scores) / len(scores)
        return result

    def get_material_calculation_summary(self, material_id: str | None = None) -> dict[str, Any]:
        """Counts per calculation type and status, and the completed types: for one material,
        or keyed by material id for all."""
        calcs = self.get_calculations_by_status(material_id=material_id) if material_id else self.get_calculations_by_status()
        summaries: dict[str, dict[str, Any]] = {}
        for calc in sorted(calcs, key=lambda c: (c["material_id"], c["calc_type"], str(c["status"]))):
            s = summaries.setdefault(
                calc["material_id"],
                {"material_id": calc["material_id"], "calculation_types": {}, "total_calculations": 0},
            )
            per_type = s["calculation_types"].setdefault(calc["calc_type"], {})
            per_type[calc["status"]] = per_type.get(calc["status"], 0) + 1
            s["total_calculations"] += 1
        for s in summaries.values():
            s["completed_types"] = sorted(t for t, st in s["calculation_types"].items() if st.get("completed", 0))
        if material_id:
            return summaries.get(
                material_id,
                {"material_id": material_id, "calculation_types": {}, "total_calculations": 0, "completed_types": []},
            )
        return summaries
