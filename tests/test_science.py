"""Multiple-choice science: letter extraction, the MC loader (MMLU, GPQA layout), filter and eval grading."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from pipeline.choices import extract_choice, grade_choice, letter_of
from pipeline.evaluate.benchmarks import BenchmarkSpec, load_problems
from pipeline.grading import grade
from pipeline.mc_sets import GPQA_COLUMNS, balanced_positions
from pipeline.records import RecordError, read_jsonl

THINK = "<think>\nA looks tempting, but B and D fail; answer: A? No.\n</think>\n\n"
OPTS = ["42 J", "3.50 m/s", "Mitochondria", "none of these"]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- letter extraction

@pytest.mark.parametrize("final, letter, how", [
    ("\\boxed{C}", "C", "letter"),
    ("The answer is $\\boxed{\\text{C}}$.", "C", "letter"),
    ("\\boxed{(c)}", "C", "letter"),
    ("\\boxed{\\textbf{(C) } Mitochondria}", "C", "letter"),
    ("Answer: C", "C", "letter"),
    ("ANSWER: C", "C", "letter"),
    ("So the answer is (C).", "C", "letter"),
    ("the answer is (c)", "C", "letter"),
    ("The correct answer is C because the membrane ...", "C", "letter"),
    ("The correct option is C) Mitochondria", "C", "letter"),
    ("The answer is C, since ATP is made there.", "C", "letter"),
    ("The answer is A, since ATP is made there.", "A", "letter"),
    ("The best answer is option C.", "C", "letter"),
    ("Correct choice: choice (c)", "C", "letter"),
    ("Final answer: **C**", "C", "letter"),
    ("Weighing it all up:\n\n**(C)**", "C", "letter"),
    ("The answer is mitochondria.", "C", "text"),  # an option's text instead of its letter
    ("\\boxed{3.5 m/s}", "B", "text"),  # numbers in normal form: 3.5 == 3.50
    ("\\boxed{42J}", "A", "text"),
    ("\\boxed{A, C}", "A,C", "several"),
    ("The answer is A or C.", "A,C", "several"),
    ("\\boxed{AC}", "A,C", "several"),
    ("\\boxed{E}", "E", "letter"),  # a letter outside the four options
    ("\\boxed{17 kg}", "17 kg", "other"),  # an answer that is no option
    ("The answer is a bit unclear to me.", "a bit unclear to me", "other"),  # "a" is an article
    ("I think B is right", None, "none"),
])
def test_letter_extraction_forms(final, letter, how):
    assert extract_choice(THINK + final, OPTS) == (letter, how)


def test_only_the_final_answer_counts_and_the_last_box_wins():
    # The reasoning mentions "answer: A"; only the text after </think> is read.
    assert extract_choice(THINK + "Therefore \\boxed{B}.", OPTS) == ("B", "letter")
    assert extract_choice(THINK + "First \\boxed{A}, corrected: \\boxed{D}", OPTS) == ("D", "letter")
    # A box beats a later loose phrase; a phrase beats a last bare line.
    assert extract_choice(THINK + "\\boxed{B}\nsome say the answer is C", OPTS)[0] == "B"


@pytest.mark.parametrize("final, status, correct", [
    ("\\boxed{C}", "correct", True),
    ("\\boxed{B}", "wrong", False),
    ("\\boxed{A, C}", "ambiguous", False),  # several letters: never a pass, even when one is right
    ("\\boxed{E}", "wrong", False),
    ("\\boxed{17 kg}", "wrong", False),
    ("I am not sure.", "no_answer", False),
])
def test_grading_statuses(final, status, correct):
    g = grade(THINK + final, "C", choices=OPTS)
    assert (g.status, g.correct) == (status, correct)


def test_unclosed_think_is_wrong_and_the_reference_forms():
    assert grade_choice("<think>\nthe answer is C", "C", OPTS).status == "unclosed_think"
    assert grade_choice("the answer is C", "C", OPTS, require_think=False).correct
    # The reference may be a letter, "(C)", an index or the option text; letters-only without options.
    assert [letter_of(r, OPTS) for r in ("C", "(c)", 2, "Mitochondria", "nope")] == ["C", "C", "C", "C", None]
    assert grade(THINK + "\\boxed{C}", "C", choices=()).correct


# --------------------------------------------------------------------------- loaders

def test_balanced_positions_spread_each_letter_evenly():
    pos = balanced_positions(198, 4, seed=7)
    assert sorted(Counter(pos).values()) == [49, 49, 50, 50]
    assert pos == balanced_positions(198, 4, seed=7) and pos != balanced_positions(198, 4, seed=8)


def _gpqa_csv(path: Path, n: int) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["Record ID", *GPQA_COLUMNS, "Subdomain"])
        w.writeheader()
        for i in range(n):
            w.writerow({"Record ID": f"rec{i}", "Question": f"Which is right in case {i}?",
                        "Correct Answer": f"right {i}", "Incorrect Answer 1": f"wrong1 {i}",
                        "Incorrect Answer 2": f"wrong2 {i}", "Incorrect Answer 3": f"wrong3 {i}",
                        "Subdomain": "Physics"})
    return path


def test_gpqa_layout_from_a_user_path_is_shuffled_balanced_and_keeps_the_permutation(tmp_path):
    f = _gpqa_csv(tmp_path / "gpqa_diamond.csv", 40)
    probs = load_problems(BenchmarkSpec(name="gpqa", path=str(f)))
    assert len(probs) == 40 and probs[0].id == "rec0"
    assert sorted(Counter(p.answer for p in probs).values()) == [10, 10, 10, 10]
    for i, p in enumerate(probs):
        right = "ABCD".index(p.answer)
        assert p.choices[right] == f"right {i}"
        perm = p.meta["permutation"]
        source = [f"right {i}", f"wrong1 {i}", f"wrong2 {i}", f"wrong3 {i}"]
        assert [source[j] for j in perm] == list(p.choices)
        assert p.problem == f"Which is right in case {i}?\n\n" + "\n".join(
            f"{'ABCD'[k]}) {c}" for k, c in enumerate(p.choices))
    again = load_problems(BenchmarkSpec(name="gpqa", path=str(f)))
    assert [p.choices for p in again] == [p.choices for p in probs]  # seeded: same order every run
    other = load_problems(BenchmarkSpec(name="gpqa", path=str(f), choices_seed=1))
    assert [p.answer for p in other] != [p.answer for p in probs]


def test_gpqa_bad_row_names_file_line_and_column(tmp_path):
    f = _gpqa_csv(tmp_path / "g.csv", 3)
    text = f.read_text().splitlines()
    text[2] = text[2].replace("wrong2 1", "")
    f.write_text("\n".join(text) + "\n")
    with pytest.raises(RecordError) as exc:
        load_problems(BenchmarkSpec(name="gpqa", path=str(f)))
    assert (exc.value.line, exc.value.field) == (3, "Incorrect Answer 2")


def test_mmlu_stem_test_split_in_upstream_order(shared_data, monkeypatch):
    monkeypatch.setenv("DISTILL_DATA_DIR", str(shared_data))
    probs = load_problems("mmlu_stem")
    assert len(probs) == 3015  # the test split only (val and dev are left out)
    rows = {r["id"]: r for r in read_jsonl(shared_data / "mmlu_stem.jsonl")}
    for p in probs[:50]:
        row = rows[p.id]
        assert row["split"] == "test" and p.answer == row["answer"] and list(p.choices) == row["choices"]
        assert p.meta["permutation"] == [0, 1, 2, 3] and p.meta["subject"] == row["subject"]
    shuffled = load_problems({"name": "mmlu_stem", "limit": 100, "shuffle_choices": True})
    assert sorted(Counter(p.answer for p in shuffled).values()) == [25, 25, 25, 25]
    for p in shuffled:
        assert p.choices[" ABCD".index(p.answer) - 1] == rows[p.id]["choices"]["ABCD".index(rows[p.id]["answer"])]


def test_choices_layout_bad_answer_is_located(tmp_path):
    f = write_jsonl(tmp_path / "mc.jsonl", [{"question": "q", "choices": ["x", "y"], "answer": "B"},
                                            {"question": "q2", "choices": ["x", "y"], "answer": "D"}])
    with pytest.raises(RecordError) as exc:
        load_problems(BenchmarkSpec(name="mc", path=str(f), layout="choices", problem_column="question"))
    assert (exc.value.line, exc.value.field) == (2, "answer")


# --------------------------------------------------------------------------- filter

def _mc_record(i: int, final: str, answer: str | None = "C", choices: list[str] | None = OPTS,
               domain: str = "science") -> dict:
    reasoning = (f"Case {i}: the membrane-bound organelle that makes ATP is what the question asks about; "
                 f"I compare each of the options in turn, variant {i * 13 + 1}.")
    rec = {"prompt_id": f"q{i}", "sample_index": 0, "domain": domain, "answer": answer, "finish_reason": "stop",
           "messages": [{"role": "user", "content": f"Question {i}: which organelle makes ATP?"},
                        {"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\n{final}"}],
           "meta": {"choices": choices} if choices else {}}
    return rec


def test_filter_grades_multiple_choice_with_the_math_reason_code(tmp_path):
    from filters.stage import FilterConfig, run
    from pipeline.config import load_config

    recs = [_mc_record(0, "The answer is \\boxed{C}."),
            _mc_record(1, "The answer is mitochondria."),  # option text: right
            _mc_record(2, "\\boxed{B}"),  # wrong letter
            _mc_record(3, "\\boxed{A, C}"),  # several letters: rejected
            _mc_record(4, "Answer: C", choices=None),  # letter reference without options: letters only
            _mc_record(5, "It is the powerhouse of the cell.", answer="mitochondria", choices=None)]  # free form
    inp = write_jsonl(tmp_path / "gen.jsonl", recs)
    cfg = load_config(FilterConfig, Path(__file__).resolve().parents[1] / "configs/filter/r1.yaml",
                      values={"inputs": [str(inp)], "output_dir": str(tmp_path / "out"), "workers": 1,
                              "decontam.enabled": False, "dedup.enabled": False})
    report = run(cfg)
    kept = {r["prompt_id"] for r in read_jsonl(tmp_path / "out" / "kept.jsonl")}
    rejected = {r["prompt_id"]: r for r in read_jsonl(tmp_path / "out" / "rejected.jsonl")}
    assert kept == {"q0", "q1", "q4", "q5"}
    assert set(rejected) == {"q2", "q3"}
    assert all(r["reject_reasons"] == ["wrong_answer"] for r in rejected.values())
    assert rejected["q3"]["reject_details"]["wrong_answer"].startswith("ambiguous")
    wa = report["rules"]["wrong_answer"]
    assert wa["statuses"] == {"ambiguous": 1, "correct": 3, "free_form": 1, "wrong": 1}
    assert wa["graded"] == 5 and wa["free_form"] == 1


# --------------------------------------------------------------------------- eval

def test_score_mode_perfect_answers_score_100_percent(shared_data, monkeypatch, tmp_path):
    from pipeline.evaluate.stage import ScoreConfig, score

    monkeypatch.setenv("DISTILL_DATA_DIR", str(shared_data))
    probs = load_problems({"name": "mmlu_stem", "limit": 60, "shuffle_choices": True})
    forms = ["\\boxed{%s}", "Answer: %s", "The answer is (%s).", "text"]
    rows = []
    for i, p in enumerate(probs):
        for j in range(2):
            form = forms[(i + j) % len(forms)]
            final = p.choices["ABCD".index(p.answer)] if form == "text" else form % p.answer
            if form == "text":
                final = f"The answer is {final}"
            rows.append({"benchmark": "mmlu_stem", "problem_id": p.id, "sample_index": j, "answer": p.answer,
                         "choices": list(p.choices), "response": f"{THINK}{final}"})
    inp = write_jsonl(tmp_path / "perfect.jsonl", rows)
    from pipeline.cli import main as cli_main

    assert cli_main(["eval", "score", "--input", str(inp), "--output", str(tmp_path / "out"), "--pass-k", "1", "2",
                     "--workers", "1", "--set", "progress=false"]) == 0
    m = json.loads((tmp_path / "out" / "results.json").read_text())["benchmarks"]["mmlu_stem"]
    assert (m["pass@1"], m["pass@k"]["2"], m["cons@k"]["2"], m["problems"]) == (100.0, 100.0, 100.0, 60)
    assert m["ci95"] == [100.0, 100.0]
    # One wrong letter per problem halves pass@1.
    for r in rows[1::2]:
        r["response"] = f"{THINK}\\boxed{{{'B' if r['answer'] != 'B' else 'C'}}}"
    half = score(ScoreConfig(inputs=[str(write_jsonl(tmp_path / "half.jsonl", rows))], output_dir=str(tmp_path / "h"),
                             pass_k=[1, 2], progress=False, grading_workers=1))
    assert half["benchmarks"]["mmlu_stem"]["pass@1"] == 50.0


def test_distill_eval_on_mmlu_stem_with_the_tiny_model(tiny_model_dir, shared_data, tmp_path, monkeypatch):
    from pipeline.evaluate.stage import EvalConfig, run

    monkeypatch.setenv("DISTILL_DATA_DIR", str(shared_data))
    out = tmp_path / "eval"
    cfg = EvalConfig.model_validate(dict(
        model=str(tiny_model_dir), label="tiny", backend="transformers", benchmarks=[{"name": "mmlu_stem", "limit": 12}],
        sampling={"n": 2, "max_tokens": 24, "seed": 1}, pass_k=[1, 2], output_dir=str(out), grading_workers=1,
        progress=False, transformers={"device": "cpu", "batch_size": 12}, batch_size=12))
    m = run(cfg)["benchmarks"]["mmlu_stem"]
    assert (m["problems"], m["samples"]) == (12, 24)
    assert 0.0 <= m["pass@1"] <= 100.0 and m["ci95"][0] <= m["pass@1"] <= m["ci95"][1]
    assert sum(m["statuses"].values()) == 24
    gen = read_jsonl(next((out / "mmlu_stem" / "generations").glob("shard-*.jsonl")))
    user = gen[0]["messages"][0]["content"]
    assert "\nA) " in user and "\nD) " in user
    assert user.endswith("put only the letter of the correct option in the box.")  # prompts/science.txt
    assert gen[0]["meta"]["choices"] and gen[0]["meta"]["permutation"] == [0, 1, 2, 3]
    samples = read_jsonl(out / "mmlu_stem" / "samples.jsonl")
    assert all(len(s["choices"]) == 4 and s["answer"] in "ABCD" for s in samples)
    # Near chance or below is expected from a random model; what matters is that every sample is graded.
    assert {s["grade_status"] for s in samples} <= {"unclosed_think", "no_answer", "wrong", "ambiguous", "correct"}


def test_prompt_file_for_generate_carries_the_options_into_records(tiny_model_dir, tmp_path):
    from pipeline.choices import choices_of
    from pipeline.generate.config import GenerateConfig
    from pipeline.generate.stage import run as generate
    from pipeline.mc_sets import main

    src = _gpqa_csv(tmp_path / "gpqa_main.csv", 8)
    prompts = tmp_path / "prompts.jsonl"
    assert main(["--layout", "gpqa", "--input", str(src), "--output", str(prompts), "--seed", "3"]) == 0
    rows = read_jsonl(prompts)
    assert sorted(Counter(r["answer"] for r in rows).values()) == [2, 2, 2, 2]
    generate(GenerateConfig.model_validate(dict(
        model=str(tiny_model_dir), backend="transformers", input={"path": str(prompts), "id_column": "id",
                                                                  "domain_column": "domain"},
        sampling={"n": 1, "max_tokens": 8}, output_dir=str(tmp_path / "gen"), progress=False,
        transformers={"device": "cpu"})))
    gen = {r["prompt_id"]: r for r in read_jsonl(tmp_path / "gen" / "shard-00000-of-00001.jsonl")}
    for r in rows:
        rec = gen[r["id"]]
        assert rec["domain"] == "science" and rec["answer"] == r["answer"]
        assert choices_of(rec) == r["choices"] and rec["meta"]["permutation"] == r["permutation"]
        assert rec["messages"][0]["content"].endswith("put only the letter of the correct option in the box.")
        # What the filter's wrong_answer rule then does with it:
        answer = f"<think>\nok\n</think>\n\n\\boxed{{{r['answer']}}}"
        assert grade(answer, rec["answer"], choices=choices_of(rec)).correct
