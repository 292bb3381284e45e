"""
The fields of a router's configuration (router.RouterConfig, saved as
router.json): each one's type and range, and the rules between them. One check
serves a RouterConfig made in Python and one read from a file, so a router.json
edited by hand gets the same one-line errors as a bad flag.

    check_config({"experts": ["algebra"], "groups": [[0]], "hidden_size": 8,
                  "n_layers": 2, "top_k": 3}, fields(RouterConfig), "router.json")
    -> UserError: router.json: field 'top_k' is 3, expected 0..1 (the number of experts)

Left out: checks that need the weights (formats/routers.py holds them).
"""
import math
import numbers
from dataclasses import MISSING

from formats.files import UserError, short


def check_positive(where, name, value):
    """A temperature: a finite number > 0 (0 divides by zero, NaN poisons every weight)."""
    if not (_is_finite(value) and value > 0):
        raise UserError(f"{where}: {name} is {value!r:.60}, expected a finite number > 0")


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)   # JSON true is not a count


def _is_finite(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_names(v):
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(s, str) and s for s in v)


def _is_groups(v):
    return isinstance(v, (list, tuple)) and all(
        isinstance(g, (list, tuple)) and g and all(_is_int(e) for e in g) for g in v)


def _is_path(v):
    return v is None or (isinstance(v, str) and bool(v))


# Each RouterConfig field: (test of its value, what was expected). Ranges that
# depend on other fields (groups, top_k, rank1, embed_layer, expert_dirs,
# experts_sha256) are in check_config.
FIELD_RULES = {
    "experts": (lambda v: _is_names(v) and len(set(v)) == len(v), "a non-empty list of distinct names"),
    "groups": (_is_groups, "a list of non-empty lists of expert indices"),
    "hidden_size": (lambda v: _is_int(v) and v > 0, "a positive int"),
    "n_layers": (lambda v: _is_int(v) and v > 0, "a positive int"),
    "level": (lambda v: v in ("token", "sequence"), "'token' or 'sequence'"),
    "prior": (lambda v: v in ("centroid", "learned", "none"), "'centroid', 'learned' or 'none'"),
    "top_k": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "temperature": (lambda v: _is_finite(v) and v > 0, "a finite number > 0"),
    "tau": (lambda v: _is_finite(v) and v > 0, "a finite number > 0"),
    "entropy_weight": (_is_finite, "a finite number"),
    "balance_weight": (lambda v: _is_finite(v) and v >= 0, "a finite number >= 0"),
    "embed_layer": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "rank1": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "rank1_alpha": (lambda v: _is_finite(v) and v > 0, "a finite number > 0"),
    "targets": (lambda v: (isinstance(v, str) and v) or _is_names(v),
                "a non-empty list of module names or one regex string"),
    "expert_dirs": (lambda v: isinstance(v, dict) and all(isinstance(d, str) and d for d in v.values()),
                    "an object of expert name -> its adapter folder"),
    "clusters_dir": (_is_path, "null or a folder name"),
    "experts_sha256": (lambda v: isinstance(v, dict) and all(isinstance(d, str) for d in v.values()),
                       "an object of expert name -> sha256"),
    "weights_sha256": (lambda v: v is None or isinstance(v, str), "null or a sha256"),
}


def check_config(values, known, where):
    """RouterConfig fields {name: value}, from router.json or from Python, against
    `known` (dataclasses.fields(RouterConfig)): no unknown or missing field, each
    value of the right type and range, groups a partition of the experts,
    expert_dirs and experts_sha256 one entry per expert or none. `where` (the
    file, or "RouterConfig") starts every message."""
    known = {f.name: f for f in known}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown field(s) {unknown}; a RouterConfig has {sorted(known)}")
    required = [n for n, f in known.items() if f.default is MISSING and f.default_factory is MISSING]
    missing = [n for n in required if n not in values]
    if missing:
        raise UserError(f"{where}: required field(s) {missing} missing")
    for name, (ok, expected) in FIELD_RULES.items():
        if name in values and not ok(values[name]):
            raise UserError(f"{where}: field {name!r} is {short(values[name])}, expected {expected}")
    E, L = len(values["experts"]), values["n_layers"]
    top_k, rank1, embed_layer = (values.get(n, known[n].default) for n in ("top_k", "rank1", "embed_layer"))
    if sorted(e for g in values["groups"] for e in g) != list(range(E)):
        raise UserError(f"{where}: field 'groups' is {short(values['groups'])}, expected a partition "
                        f"of the expert indices 0..{E - 1} (each in exactly one group)")
    if top_k > E:
        raise UserError(f"{where}: field 'top_k' is {top_k}, expected 0..{E} (the number of experts)")
    if rank1 and rank1 != E:
        raise UserError(f"{where}: field 'rank1' is {rank1}, expected 0 or {E} (the number of experts)")
    if embed_layer > L:
        raise UserError(f"{where}: field 'embed_layer' is {embed_layer}, expected 0..{L} (n_layers)")
    for name in ("expert_dirs", "experts_sha256"):
        named = sorted(values.get(name, {}))
        if named and (rank1 or named != sorted(values["experts"])):
            raise UserError(f"{where}: field {name!r} names {short(named)}, expected one entry per expert of "
                            f"'experts' ({short(sorted(values['experts']))}), or none for rank-1 experts")
