"""data.lila (loading, real-LiLA shapes, malformed files), data.prompts and data.tokenizer.

Fixtures: tests/fixtures/ours/ holds small files cut from data/generate.py output
(composed/ beside them must not be read); tests/fixtures/lila/ holds files shaped
like a real allenai/Lila download (several answers, program lists, no split or
submodule fields, an iid/dev.json)."""
import json
import os
import re
import subprocess
import sys

import pytest
from tokenizers import Tokenizer

from data.lila import Example, by_skill, check_disjoint, check_distinct, load, skills_of
from formats.files import UserError
from data.prompts import draw_shots, format_qa, prompt_ids, question_ids, shot_pool
from data.tokenizer import EOT, train_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
OURS = os.path.join(FIXTURES, "ours")
LILA = os.path.join(FIXTURES, "lila")


# ----------------------------------------------------------------------------
# loading our generator's files

def test_load_folder_reads_every_skill_file_but_not_composed():
    examples = load(OURS)
    assert skills_of(examples) == ["algebra", "numbers"]
    assert len(examples) == 25 + 45
    composed = load(os.path.join(OURS, "composed"))
    assert not {e.question for e in composed} & {e.question for e in examples}
    assert all(e.submodule.startswith(e.skill + "__") for e in examples)


def test_load_split_and_skills_filters():
    train = load(OURS, split="train")
    assert {e.split for e in train} == {"train"} and len(train) == 3 * (5 + 9)
    algebra = load([os.path.join(OURS, "algebra.json"), os.path.join(OURS, "numbers.json")],
                   split="test", skills=["algebra"])
    assert [e.submodule for e in algebra] == ["algebra__linear_1d", "algebra__linear_2d",
                                              "algebra__polynomial_roots",
                                              "algebra__sequence_next_term",
                                              "algebra__sequence_nth_term"]
    first = algebra[0]
    assert first == Example("Solve 65*l = 50*l for l.", ("0",), "algebra", "algebra__linear_1d", "test")


def test_load_errors_on_missing_skill_bad_split_and_missing_path(tmp_path):
    with pytest.raises(UserError, match=r"skill\(s\) \['geometry'\].*found: \['algebra', 'numbers'\]"):
        load(OURS, skills=["algebra", "geometry"])
    with pytest.raises(ValueError, match="split must be one of"):
        load(OURS, split="validation")
    with pytest.raises(UserError, match="nowhere"):
        load(os.path.join(OURS, "nowhere"))
    with pytest.raises(UserError, match="no \\*.json task files"):
        load(str(tmp_path))


def test_a_skill_without_the_split_asked_for_is_named_not_dropped(tmp_path):
    (tmp_path / "algebra.json").write_text(json.dumps({"Instances": [GOOD]}))
    (tmp_path / "numbers.json").write_text(json.dumps({"Instances": [{**GOOD, "split": "train"}]}))
    with pytest.raises(UserError, match=r"skill\(s\) \['numbers'\] have no test examples"):
        load(str(tmp_path), split="test")
    assert skills_of(load(str(tmp_path), split="test", skills=["algebra"])) == ["algebra"]


def test_questions_are_compared_with_their_whitespace_collapsed():
    """check_distinct and check_disjoint read each run of whitespace as one space and
    strip the ends: a copy spaced otherwise is the same question; other words are not."""
    def q(text, split="test"):
        return Example(text, ("5",), "algebra", "algebra__x", split)
    with pytest.raises(UserError, match=re.escape("the algebra question ' What is  2+3?\\n' comes more than once")):
        check_distinct([q("What is 2+3?"), q(" What is  2+3?\n")], "here")
    with pytest.raises(UserError, match=re.escape("here: 1 test question(s) are also train questions")):
        check_disjoint([q("What is 2+3?")], [q("What is\t2+3? ", "train")], "here")
    check_distinct([q("What is 2+3?"), q("What is 2 + 3?")], "here")
    check_disjoint([q("What is 2+3?")], [q("What is 2 + 3?", "train")], "here")


def test_real_lila_shapes():
    """all/-style file: split per instance, several answers, skill from the file
    name (no "Math category"); a file without splits is test; iid/dev.json is dev."""
    examples = load(LILA)  # the folder: addsub.json, deepmind_mathematics_algebra.json
    assert [(e.skill, e.split) for e in examples] == [
        ("addsub", "test"), ("algebra", "train"), ("algebra", "train"), ("algebra", "dev"),
        ("algebra", "test")]
    assert examples[2].answers == ("3", "3.0")
    assert examples[2].submodule == "deepmind_mathematics_algebra"
    iid = load(os.path.join(LILA, "iid", "dev.json"))
    assert [(e.skill, e.split, e.answers) for e in iid] == [("iid", "dev", ("2.321",)),
                                                            ("iid", "dev", ("-1/62",))]


def test_file_name_gives_skill_and_split(tmp_path):
    task = {"Instances": [{"Input": "What is 7 times 6?", "Output Answer": ["42"]}]}
    for name, skill, split in [("deepmind_mathematics_arithmetic__mul_test.json", "arithmetic", "test"),
                               ("amps_algebra_train.json", "amps_algebra", "train"),
                               ("numbers_dev.json", "numbers", "dev")]:
        path = tmp_path / name
        path.write_text(json.dumps(task))
        (e,) = load(str(path))
        assert (e.skill, e.split) == (skill, split), name


GOOD = {"Input": "What is 2 + 3?", "Output Program": [], "Output Answer": ["5"], "split": "test"}


@pytest.mark.parametrize("instance, field", [
    ({k: v for k, v in GOOD.items() if k != "Input"}, "Input"),
    ({**GOOD, "Input": 7}, "Input"),
    ({**GOOD, "Input": "  "}, "Input"),
    ({k: v for k, v in GOOD.items() if k != "Output Answer"}, "Output Answer"),
    ({**GOOD, "Output Answer": "5"}, "Output Answer"),
    ({**GOOD, "Output Answer": []}, "Output Answer"),
    ({**GOOD, "Output Answer": [5]}, "Output Answer"),
    ({**GOOD, "Output Answer": [""]}, "Output Answer"),
    ({**GOOD, "Output Answer": ["5\n6"]}, "Output Answer"),     # the prompt's answer ends at a newline
    ({**GOOD, "Input": "What is 2 + 3?\nAnswer: 6\n\nQuestion: What is 1 + 1?"}, "Input"),   # a fake shot
    ({**GOOD, "split": "validation"}, "split"),
    ({**GOOD, "submodule": None}, "submodule"),
])
def test_malformed_instance_names_file_index_and_field(tmp_path, instance, field):
    path = tmp_path / "broken_task.json"
    path.write_text(json.dumps({"Instances": [GOOD, instance]}))
    with pytest.raises(UserError) as err:
        load(str(path))
    msg = str(err.value)
    assert "broken_task.json" in msg and "instance 1" in msg and repr(field) in msg, msg


def test_a_question_may_span_lines(tmp_path):
    """LiLA has multi-line questions; only lines that read as the prompt's own markers are refused."""
    path = tmp_path / "lines_task.json"
    path.write_text(json.dumps({"Instances": [{**GOOD, "Input": "Let x = 2.\nWhat is x + 3?"}]}))
    assert [e.question for e in load(str(path))] == ["Let x = 2.\nWhat is x + 3?"]


@pytest.mark.parametrize("text, expected", [
    ('{"Instances": [', "invalid JSON"),
    ('[{"Input": "q"}]', "expected a JSON object with 'Instances'"),
    ('{"Definition": []}', "field 'Instances': missing"),
    ('{"Instances": {"Input": "q"}}', "field 'Instances': expected a list"),
    ('{"Instances": ["What is 2 + 3?"]}', "instance 0: expected a JSON object"),
    ('{"Instances": []}', "field 'Instances': empty, expected at least one question"),
    ('{"Categories": [{"Math category": ""}], "Instances": [%s]}' % json.dumps(GOOD), "'Math category'"),
])
def test_malformed_file_names_file_and_problem(tmp_path, text, expected):
    path = tmp_path / "broken_task.json"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        load(str(path))
    assert "broken_task.json" in str(err.value) and expected in str(err.value), str(err.value)


# ----------------------------------------------------------------------------
# prompts

def test_format_qa():
    assert format_qa("What is 2 + 3?", "5") == "Question: What is 2 + 3?\nAnswer: 5\n\n"
    assert format_qa("What is 2 + 3?") == "Question: What is 2 + 3?\nAnswer:"


def few_shot_prompt(example, pool, k, seed):
    """k shots (see draw_shots) followed by the open question, as text."""
    shots = draw_shots(example, pool, k, seed)
    return "".join(format_qa(s.question, s.answers[0]) for s in shots) + format_qa(example.question)


def test_few_shot_prompt_layout():
    train = load(OURS, split="train")
    (example,) = [e for e in load(OURS, split="test") if e.submodule == "numbers__gcd"]
    prompt = few_shot_prompt(example, train, k=4, seed=0)
    shots = draw_shots(example, train, k=4, seed=0)
    assert prompt == "".join(f"Question: {s.question}\nAnswer: {s.answers[0]}\n\n" for s in shots) \
        + f"Question: {example.question}\nAnswer:"
    assert prompt.count("Question: ") == 5 and prompt.endswith("Answer:")
    assert few_shot_prompt(example, train, k=0, seed=0) == format_qa(example.question)


def test_shots_same_skill_never_the_question_and_deterministic():
    train = load(OURS, split="train")
    pool = by_skill(train)
    for e in train:  # the hardest case: the question is in the pool itself
        shots = draw_shots(e, train, k=4, seed=7)
        assert all(s.skill == e.skill and s.question != e.question for s in shots)
        assert len({s.question for s in shots}) == 4
        assert shots == draw_shots(e, train, k=4, seed=7) == draw_shots(e, pool, k=4, seed=7)
    redrawn = [draw_shots(e, train, k=4, seed=8) != draw_shots(e, train, k=4, seed=7) for e in train]
    assert sum(redrawn) > len(train) // 2


def test_shots_do_not_depend_on_python_hash_seed():
    code = ("from data.lila import load; from data.prompts import draw_shots; "
            f"t = load({OURS!r}, split='train'); "
            "print([s.question for s in draw_shots(t[0], t, 4, 1)])")
    outs = {subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout
            for seed in ("1", "2")}
    assert len(outs) == 1


def test_too_few_shots_is_a_clear_error():
    train = load(OURS, split="train", skills=["algebra"])  # 15 algebra questions
    with pytest.raises(ValueError, match="need 15 shots of skill 'algebra'.* only 14"):
        draw_shots(train[0], train, k=15, seed=0)
    (numbers_q,) = [e for e in load(OURS, split="test") if e.submodule == "numbers__gcd"]
    with pytest.raises(ValueError, match="skill 'numbers'.* only 0"):
        draw_shots(numbers_q, train, k=1, seed=0)


def test_shots_of_the_same_submodule():
    train = load(OURS, split="train")
    pool = shot_pool(train, "submodule")
    for e in load(OURS, split="test"):
        shots = draw_shots(e, pool, k=2, seed=3, source="submodule")
        assert all(s.submodule == e.submodule and s.question != e.question for s in shots)
        assert shots == draw_shots(e, train, k=2, seed=3, source="submodule")


def test_nearest_shots_are_the_last_k_of_the_question_s_list():
    """pool holds each question's neighbours farthest first: the last k are its
    shots, the nearest next to the question; the question itself never is one."""
    a, b, c, d = (Example(q, ("1",), "s", "s__m", "train") for q in "abcd")
    q = Example("q", ("2",), "?", "?", "test")
    pool = {"q": [a, b, c, d], "c": [a, b, c, d]}
    assert draw_shots(q, pool, 2, seed=0, source="nearest") == [c, d]
    assert draw_shots(q, pool, 4, seed=9, source="nearest") == [a, b, c, d]
    assert draw_shots(c, pool, 3, seed=0, source="nearest") == [a, b, d]
    with pytest.raises(ValueError, match="need 5 shots of nearest 'q', but the pool has only 4 nearest"):
        draw_shots(q, pool, 5, seed=0, source="nearest")


def test_a_prompt_too_long_for_the_context_loses_its_oldest_shots(tok):
    """question_ids keeps the newest shots that leave max_new_tokens of the context
    free and says how many it kept: the prompt is prompt_ids of exactly those, and
    one more shot would not fit."""
    train = load(OURS, split="train", skills=["algebra"])
    q, pool = train[0], {"algebra": train}
    pairs = [(s.question, s.answers[0]) for s in draw_shots(q, pool, 8, seed=0)]
    def length(shots):
        return len(prompt_ids(tok, shots, q.question, q.answers[0])[0])
    assert question_ids(tok, q, pool, 8, 0, length(pairs) + 32, 32)[2] == 8           # it fits: all 8
    context = length(pairs) + 31                                                      # one token short
    prompt, gold, kept = question_ids(tok, q, pool, 8, 0, context, 32)
    assert 0 < kept < 8 and (prompt, gold) == prompt_ids(tok, pairs[8 - kept:], q.question, q.answers[0])
    assert len(prompt) + 32 <= context < length(pairs[7 - kept:]) + 32


# ----------------------------------------------------------------------------
# tokenizer

@pytest.fixture(scope="module")
def tok():
    train = load(OURS, split="train")
    return train_tokenizer([format_qa(e.question, e.answers[0]) for e in train], vocab_size=300)


def test_tokenizer_roundtrip_digits_and_eot(tok, tmp_path):
    text = "Question: Solve -21*v - 96 = 156 for v.\nAnswer: -12\n\n\tLet f(x) = x**2 - 0.5*x. é"
    assert tok.decode(tok.encode(text).ids) == text
    assert tok.token_to_id(EOT) == 0
    assert tok.encode(EOT + "7").ids[0] == 0
    assert tok.decode(tok.encode("1" + EOT).ids, skip_special_tokens=False) == "1" + EOT
    ids = tok.encode("x = 1234567890").ids
    digits = [tok.decode([i]) for i in ids if tok.decode([i]).strip().isdigit()]
    assert digits == list("1234567890")
    path = str(tmp_path / "tokenizer.json")
    tok.save(path)
    loaded = Tokenizer.from_file(path)
    assert loaded.encode(text).ids == tok.encode(text).ids


def test_tokenizer_training_is_deterministic(tok):
    train = load(OURS, split="train")
    again = train_tokenizer([format_qa(e.question, e.answers[0]) for e in train], vocab_size=300)
    assert again.to_str() == tok.to_str()
    assert tok.get_vocab_size() == 300


def test_tokenizer_cli(tmp_path):
    out = str(tmp_path / "tokenizer.json")
    run = subprocess.run([sys.executable, "-m", "data.tokenizer", "--data", OURS, "--out", out,
                          "--vocab-size", "300"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "42 train questions" in run.stderr and "wrote" in run.stderr and not run.stdout
    assert Tokenizer.from_file(out).get_vocab_size() == 300


def test_write_atomic_gives_a_plain_file_mode_and_makes_the_folder(tmp_path):
    """A writer that makes its file owner-only (safetensors does) still leaves a file
    with the mode of any new file, in a folder made for it."""
    from formats.files import write_atomic
    path = tmp_path / "new" / "f.bin"

    def write(tmp):
        with open(os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600), "w") as f:
            f.write("x")
    umask = os.umask(0o022)
    try:
        write_atomic(str(path), write)
    finally:
        os.umask(umask)
    assert path.read_text() == "x" and (path.stat().st_mode & 0o777) == 0o644
