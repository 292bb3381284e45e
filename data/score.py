"""
Exact-match scoring of generated answers, after normalisation.

    from data.score import is_correct, normalize
    is_correct(" -.50\\n\\nQuestion: ...", ["-1/2"])      # True
    accuracy(records)      # {skill: (correct, total)} of eval.py's records

A prediction is correct when normalize(prediction) equals normalize(answer) for
any accepted answer. normalize turns an answer into a canonical string, one step
at a time (the examples run as doctests in tests/test_score.py):

1. Cleanup, for model output: keep the first line, strip spaces, drop one
   trailing period, lower-case everything (so True == true, -1A3 == -1a3).

2. Spaces around operators and punctuation go; other runs become one space.

    >>> normalize("  6 * l**2 +  11.\\nQuestion: next")
    '11 + 6*l**2'

3. A top-level comma makes a list; items are normalised one by one and keep
   their order: sorting questions expect an order, and the generator already
   lists polynomial roots in ascending order.

    >>> normalize("-3,1, 6")
    '-3, 1, 6'
    >>> normalize("3, 1") == normalize("1, 3")
    False

4. Numbers (integers, decimals, integer fractions) compare as exact numbers,
   written as a reduced fraction. No exponent notation: in base 15, "1e5" is a
   number's digits, not 100000.

    >>> normalize("-.5"), normalize("-0.50"), normalize("-2/4"), normalize("+7")
    ('-1/2', '-1/2', '-1/2', '7')
    >>> normalize("6/8") == normalize("0.75")
    True
    >>> normalize("1e5")
    '1e5'

5. Clock times lose leading zeros and the space before AM/PM.

    >>> normalize("09:05PM")
    '9:05 pm'

6. Expressions (letters, digits and + - * / ** ( ) only) are sums of
   top-level terms; the terms are sorted, so only their order may differ.
   Nothing inside a term changes except whole numbers (step 4): no expanding,
   no reordering of factors, no simplifying.

    >>> normalize("-3 - sqrt(5)") == normalize("-sqrt(5) - 3")
    True
    >>> normalize("x**2 + 1") == normalize("x**2 - 1")
    False
    >>> normalize("2*x") == normalize("x*2")
    False

7. Everything else (True/False, yes/no, option letters, variable names, numbers
   in other bases) is compared as the cleaned-up string: "yes" != "True".

Left out: symbolic equivalence (would need sympy), units, and answers spread
over several lines.
"""
import re
from collections import defaultdict
from fractions import Fraction

_NUMBER = re.compile(r"[+-]?(\d+/\d+|\d+\.?\d*|\.\d+)")
_TIME = re.compile(r"(\d{1,2}):(\d\d) ?([ap])\.?m\.?")
_EXPRESSION = re.compile(r"[a-z0-9.*/()+-]+")


def _number(s):
    """The Fraction that s spells exactly, or None."""
    if not _NUMBER.fullmatch(s):
        return None
    try:
        return Fraction(s)
    except ZeroDivisionError:  # "1/0"
        return None


def _split_top(s, cut):
    """Cut s before every index i outside parentheses where cut(s, i) holds;
    None if the parentheses do not balance."""
    pieces, depth, start = [], 0, 0
    for i, c in enumerate(s):
        depth += (c == "(") - (c == ")")
        if depth < 0:
            return None
        if depth == 0 and cut(s, i):
            pieces.append(s[start:i])
            start = i
    return pieces + [s[start:]] if depth == 0 else None


def _is_comma(s, i):
    return s[i] == ","


def _is_binary_sign(s, i):
    """A + or - between two terms; not a sign as in "-x", "x**-2" or "x + -2"."""
    return s[i] in "+-" and i > 0 and s[i - 1] not in "*/+-"


def _sum(s):
    """'8*p + 2' -> '2 + 8*p': the top-level terms, sorted; None if s is no sum."""
    pieces = _split_top(s, _is_binary_sign)
    if pieces is None:
        return None
    terms = []
    for piece in pieces:
        body = piece.lstrip("+-")
        negative = piece[:len(piece) - len(body)].count("-") % 2 == 1
        if not body:
            return None
        value = _number(body)
        if value is not None:
            body = str(value)
            negative = negative and value != 0
        terms.append((body, negative))
    terms.sort()
    first, rest = terms[0], terms[1:]
    return ("-" if first[1] else "") + first[0] + "".join(
        f" {'-' if neg else '+'} {body}" for body, neg in rest)


def _item(s):
    """Canonical form of one list item (steps 4-7)."""
    value = _number(s)
    if value is not None:
        return str(value)
    m = _TIME.fullmatch(s)
    if m:
        return f"{int(m[1])}:{m[2]} {m[3]}m"
    if _EXPRESSION.fullmatch(s):
        return _sum(s) or s
    return s


def normalize(answer):
    """The canonical string of an answer or a model's output (see the module docstring)."""
    s = answer.split("\n", 1)[0].strip()
    if s.endswith("."):
        s = s[:-1].rstrip()
    s = s.lower()
    s = re.sub(r"\s*([-+*/^(),:=<>])\s*", r"\1", s)
    s = re.sub(r"\s+", " ", s)
    items = _split_top(s, _is_comma)
    if items is None:  # unbalanced parentheses: compare as written
        return s
    items = items[:1] + [x[1:] for x in items[1:]]  # drop the commas
    return ", ".join(_item(x) for x in items)


def is_correct(prediction, answers):
    """Whether the prediction matches any accepted answer (a string or a list of them)."""
    if isinstance(answers, str):
        answers = [answers]
    p = normalize(prediction)
    return any(p == normalize(a) for a in answers)


def answer_form(answer):
    """The kind of answer a string is, after normalize: "list", "number", "time",
    "true/false", "expression" (letters, digits and + - * / ** ( ) only) or
    "other". A wrong answer of the gold answer's kind has the answer's format and
    the wrong value; one of another kind missed the format as well.

    >>> [answer_form(a) for a in ("-.50", "3, 1", "09:05PM", "True", "-15*g - 737")]
    ['number', 'list', 'time', 'true/false', 'expression']
    >>> answer_form("The answer is 5"), answer_form("")
    ('other', 'other')
    """
    s = normalize(answer)
    items = _split_top(s, _is_comma)
    if items is not None and len(items) > 1:
        return "list"
    if _number(s) is not None:
        return "number"
    if _TIME.fullmatch(s):
        return "time"
    if s in ("true", "false"):
        return "true/false"
    terms = s.replace(" + ", "+").replace(" - ", "-")      # normalize writes a sum's terms "a + b"
    return "expression" if s and _EXPRESSION.fullmatch(terms) else "other"


# ---------------------------------------------------------------------------
# Per skill: eval.py's records counted
# ---------------------------------------------------------------------------

def accuracy(records, key="skill"):
    """{group: (correct, total)} by skill or submodule."""
    counts = defaultdict(lambda: [0, 0])
    for r in records:
        counts[r[key]][0] += r["correct"]
        counts[r[key]][1] += 1
    return {k: tuple(v) for k, v in sorted(counts.items())}


def answer_nlls(records):
    """{skill: mean answer NLL}."""
    per = defaultdict(list)
    for r in records:
        per[r["skill"]].append(r["answer_nll"])
    return {k: sum(v) / len(v) for k, v in sorted(per.items())}


def mean_accuracy(records):
    """Unweighted mean over skills of the per-skill accuracy."""
    table = accuracy(records)
    return sum(c / n for c, n in table.values()) / max(len(table), 1)
