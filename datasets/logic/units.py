"""Display units (the canonical units streams normalizes to, pint-style: ``m**3/h``, ``degC``)
as UCUM codes (``m3/h``, ``Cel``), the machine-readable form written beside them.

Only what can be mapped with certainty is: an atom must be a UCUM unit (with an SI prefix where
UCUM allows one) or a known alias; anything else gives None (no code rather than a wrong one).
"""

from __future__ import annotations

import re

# Aliases of whole atoms -> UCUM.
_ALIAS = {
    # A temperature difference: UCUM's K (a difference in K equals one in Cel; Cel itself is absolute).
    "delta_degC": "K",
    "ΔK": "K",
    "degC": "Cel",
    "°C": "Cel",
    "celsius": "Cel",
    "degF": "[degF]",
    "°F": "[degF]",
    "percent": "%",
    "%": "%",
    "ppm": "[ppm]",
    "ppb": "[ppb]",
    "rpm": "{rev}/min",
    "micron": "um",
    "µm": "um",
    "l": "L",
    "dtex": "(dg/km)",  # 1 dtex = 1 g per 10 km
    "tex": "(g/km)",
    "1": "1",
}
_PREFIX = "(?:Y|Z|E|P|T|G|M|k|h|da|d|c|m|u|n|p)?"
# UCUM metric units that take prefixes, and non-metric ones that do not.
_METRIC = "m|g|s|Pa|bar|N|J|W|A|V|Hz|L|mol|K|Ohm|S|C|F|T|Wb|H|cd|lx|lm|t|eq|Bq|Gy|Sv|Cel"
_PLAIN = "min|h|d|wk|a|mo|%|\\[ppm\\]|\\[ppb\\]|\\[degF\\]|\\[psi\\]|\\[in_i\\]|\\[ft_i\\]|\\[lb_av\\]"
_ATOM = re.compile(f"^(?:{_PREFIX}(?:{_METRIC})|{_PLAIN})$")
_TOKEN = re.compile(r"([^*/^.()]+)(?:\^(-?\d+))?")


def ucum(unit: str) -> str | None:
    """The UCUM code of a display unit, or None when there is none or it is not certain."""
    u = unit.strip()
    if not u:
        return None
    if u in _ALIAS and not _ALIAS[u].startswith("("):
        return _ALIAS[u]
    out: list[str] = []
    pos = 0
    for part in re.split(r"([/*.])", u.replace("**", "^").replace("³", "^3").replace("²", "^2")):
        if part in ("/", "*", "."):
            out.append("/" if part == "/" else ".")
            continue
        m = _TOKEN.fullmatch(part.strip())
        if m is None:
            return None
        atom, exp = m.group(1), m.group(2)
        code = _ALIAS.get(atom, atom)
        if code.startswith("("):
            if exp:
                return None
            code = code if pos else code[1:-1]  # leading: no parentheses needed
        elif not _ATOM.match(code):
            return None
        out.append(code + (exp or ""))
        pos += 1
    return "".join(out)
