"""Each cleaning step on small English and Chinese inputs, with the exact expected output."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.core.prep_recipe import Recipe, recipe_errors
from workers.dataprep.pipeline import Pipeline


def run(steps: list[dict[str, Any]], rows: list[dict[str, Any]], schema: str = "text"):
    pipeline = Pipeline(Recipe.model_validate({"steps": steps}).steps, schema)
    out = list(pipeline.run(rows))
    return out, [r.as_dict() for r in pipeline.reports]


def texts(*values: str) -> list[dict[str, str]]:
    return [{"text": v} for v in values]


def test_strip_html_removes_tags_scripts_and_comments_and_decodes_entities() -> None:
    out, reports = run(
        [{"step": "strip_html"}],
        texts(
            "<p>Hello <b>world</b></p><script>alert(1)</script><!-- note -->",
            "<div>第一段&amp;更多</div><br/>第二段",
            "1 < 2 and 3 > 2",
        ),
    )
    assert [r["text"] for r in out] == ["Hello world\n", "第一段&更多\n\n第二段", "1 < 2 and 3 > 2"]
    assert reports == [{"step": "strip_html", "rows_in": 3, "removed": 0, "changed": 2}]


def test_nfkc_folds_full_width_forms_in_english_and_chinese() -> None:
    out, reports = run([{"step": "nfkc"}], texts("ＡＢＣ１２３ ﬁne", "你好，世界！", "plain"))
    assert [r["text"] for r in out] == ["ABC123 fine", "你好,世界!", "plain"]
    assert reports[0]["changed"] == 2


def test_whitespace_collapses_spaces_including_ideographic_and_zero_width() -> None:
    out, _ = run(
        [{"step": "whitespace"}],
        texts("  Hello \t  world  \n\n\n\n next\r\nline ", "你好\u3000\u3000世界\u200b！ "),
    )
    assert [r["text"] for r in out] == ["Hello world\n\nnext\nline", "你好 世界！"]
    out, _ = run([{"step": "whitespace", "keep_newlines": False}], texts("a \n\n b\tc"))
    assert out[0]["text"] == "a b c"


def test_length_filter_counts_unicode_characters_not_bytes() -> None:
    out, reports = run(
        [{"step": "length_filter", "unit": "chars", "min": 4, "max": 10}],
        texts("你好世界", "你好", "hello world!", "short one"),
    )
    assert [r["text"] for r in out] == ["你好世界", "short one"]
    assert reports[0] == {"step": "length_filter", "rows_in": 4, "removed": 2, "changed": 0}


def test_exact_dedup_keeps_the_first_of_identical_rows() -> None:
    out, reports = run([{"step": "exact_dedup"}], texts("same", "你好", "same", "Same", "你好"))
    assert [r["text"] for r in out] == ["same", "你好", "Same"]
    assert reports[0]["removed"] == 2


def test_near_dedup_removes_a_near_copy_but_keeps_distinct_rows() -> None:
    rows = texts(
        "The quick brown fox jumps over the lazy dog near the river bank this morning.",
        "The quick brown fox jumps over the lazy dog near the river bank this morning!",
        "A completely different sentence about relational databases and SQL queries.",
        "今天天气很好，我们一起去公园散步吧，顺便在路上买点新鲜的水果回家。",
        "今天天气很好，我们一起去公园散步吧，顺便在路上买点新鲜的水果回家！",
        "机器学习是人工智能的一个分支，研究计算机如何从数据中自动学习规律。",
    )
    out, reports = run([{"step": "near_dedup", "threshold": 0.7}], rows)
    assert [r["text"] for r in out] == [
        rows[0]["text"],
        rows[2]["text"],
        rows[3]["text"],
        rows[5]["text"],
    ]
    assert reports[0]["removed"] == 2


def test_pii_mask_replaces_emails_phones_and_urls_in_english_and_chinese() -> None:
    out, reports = run(
        [{"step": "pii_mask"}],
        texts(
            "联系我：zhang.san@example.com，电话13800138000，网址https://example.cn/a?b=1。",
            "Call +1 (555) 123-4567 or visit www.test.org. Mail: bob@mail.co.uk",
            "On 2024-01-15 version 1.2.3 shipped 42 items.",
        ),
    )
    assert [r["text"] for r in out] == [
        "联系我：[EMAIL]，电话[PHONE]，网址[URL]。",
        "Call [PHONE] or visit [URL]. Mail: [EMAIL]",
        "On 2024-01-15 version 1.2.3 shipped 42 items.",
    ]
    assert reports[0]["changed"] == 2
    out, _ = run(
        [{"step": "pii_mask", "phones": False, "urls": False}], texts("a@b.io 13800138000")
    )
    assert out[0]["text"] == "[EMAIL] 13800138000"


def test_language_filter_keeps_only_the_chosen_languages() -> None:
    out, reports = run(
        [{"step": "language_filter", "languages": ["zh"]}],
        texts(
            "这是一个用来测试语言检测的中文句子。",
            "This is an English sentence used to test language detection.",
            "Ceci est une phrase française pour tester la détection de langue.",
        ),
    )
    assert [r["text"] for r in out] == ["这是一个用来测试语言检测的中文句子。"]
    assert reports[0]["removed"] == 2


def test_steps_touch_every_text_field_of_the_schema_but_never_labels_or_roles() -> None:
    chat = [
        {
            "messages": [
                {"role": "user", "content": " <b>Hi</b> "},
                {"role": "assistant", "content": "<i>你好</i>", "name": "x"},
            ]
        }
    ]
    out, reports = run([{"step": "strip_html"}, {"step": "whitespace"}], chat, "chat")
    assert out == [
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "你好", "name": "x"},
            ]
        }
    ]
    assert [r["changed"] for r in reports] == [1, 1]
    labelled = [{"text": " <b>good</b> ", "label": " <b>pos</b> ", "split": "train"}]
    out, _ = run([{"step": "strip_html"}, {"step": "whitespace"}], labelled, "classification")
    assert out == [{"text": "good", "label": " <b>pos</b> ", "split": "train"}]
    alpaca = [{"instruction": "Ａ", "input": "", "output": "１"}]
    out, _ = run([{"step": "nfkc"}], alpaca, "instruction")
    assert out == [{"instruction": "A", "input": "", "output": "1"}]


def test_steps_run_in_the_order_given_and_report_each() -> None:
    rows = texts("<p>ＨＥＬＬＯ</p>", "<p>HELLO</p>", "hi")
    out, reports = run(
        [
            {"step": "strip_html"},
            {"step": "nfkc"},
            {"step": "whitespace"},
            {"step": "exact_dedup"},
            {"step": "length_filter", "min": 3},
        ],
        rows,
    )
    assert [r["text"] for r in out] == ["HELLO"]
    assert [(r["step"], r["rows_in"], r["removed"]) for r in reports] == [
        ("strip_html", 3, 0),
        ("nfkc", 3, 0),
        ("whitespace", 3, 0),
        ("exact_dedup", 3, 1),
        ("length_filter", 2, 1),
    ]


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"steps": [{"step": "shout"}]}, "steps.0"),
        ({"steps": [{"step": "near_dedup", "threshold": 1.5}]}, "steps.0.near_dedup.threshold"),
        ({"steps": [{"step": "length_filter"}]}, "needs min, max or both"),
        ({"steps": [{"step": "length_filter", "min": 9, "max": 2}]}, "min (9) is above max (2)"),
        ({"steps": [{"step": "length_filter", "unit": "tokens", "max": 2}]}, "needs a tokenizer"),
        ({"steps": [{"step": "language_filter", "languages": []}]}, "languages"),
        ({"steps": [{"step": "nfkc", "form": "NFC"}]}, "form"),
        ({"split": {"validation": 0.6, "test": 0.5}}, "sum below 1"),
        ({"split": {"method": "column"}}, 'needs "column"'),
    ],
)
def test_a_bad_recipe_is_refused_with_a_message_naming_the_problem(
    recipe: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        Recipe.model_validate(recipe)
    assert message in recipe_errors(info.value)


def test_length_filter_in_tokens_counts_with_the_named_tokenizer(tmp_path) -> None:
    from workers.dataprep.tokenizers import load_packaged
    from workers.engine.tokenizer import train_tokenizer

    # A converted tokenizer already kept in the packaged cache is what a worker loads: here a
    # small one stands in for SmolLM2's (whose GGUF conversion takes tens of seconds).
    stand_in = train_tokenizer(["ab ab ab cd"] * 10, vocab_size=260, model_max_length=64)
    stand_in.save_pretrained(str(tmp_path / "smollm2"))
    load_packaged.cache_clear()
    backend = load_packaged("smollm2", tmp_path).backend_tokenizer
    rows = texts("ab", "ab ab ab ab ab", "你好")
    counts = [len(backend.encode(r["text"], add_special_tokens=False).ids) for r in rows]
    step = {"step": "length_filter", "unit": "tokens", "tokenizer": "smollm2", "max": 4}
    pipeline = Pipeline(
        Recipe.model_validate({"steps": [step]}).steps, "text", packaged_cache=tmp_path
    )
    kept = [r["text"] for r in pipeline.run(rows)]
    assert kept == [r["text"] for r, n in zip(rows, counts, strict=True) if n <= 4]
    assert kept == ["ab"] and counts[2] == 6  # two Chinese characters: six byte-level tokens
    load_packaged.cache_clear()


SHORT_CHINESE_HEADLINES = [
    "央行宣布降息",
    "股市大涨",
    "国足惜败",
    "中國隊奪冠",
    "油价下调",
    "新能源车销量创新高",
    "高考今日开考",
    "暴雨预警升级",
]
SHORT_JAPANESE = ["今日は雨です", "すしが好き", "日本の首相が訪中"]
SHORT_KOREAN = ["김치는 맛있다", "서울", "오늘 날씨 좋다"]


def test_short_chinese_japanese_and_korean_texts_are_told_apart() -> None:
    from workers.dataprep.language import detect

    wanted = {"zh"}
    assert [detect(t, wanted) for t in SHORT_CHINESE_HEADLINES] == ["zh"] * 8
    assert [detect(t, wanted) for t in SHORT_JAPANESE] == ["ja"] * 3
    assert [detect(t, wanted) for t in SHORT_KOREAN] == ["ko"] * 3
    assert detect("12345 !!!", wanted) == ""


def test_keeping_chinese_keeps_every_short_chinese_headline() -> None:
    out, reports = run(
        [{"step": "language_filter", "languages": ["zh"]}],
        texts(*SHORT_CHINESE_HEADLINES, *SHORT_JAPANESE, *SHORT_KOREAN),
    )
    assert [r["text"] for r in out] == SHORT_CHINESE_HEADLINES
    assert reports[0]["removed"] == 6


def test_a_language_code_the_filter_does_not_know_is_refused_by_name() -> None:
    with pytest.raises(ValidationError) as refused:
        Recipe.model_validate({"steps": [{"step": "language_filter", "languages": ["zh", "xx"]}]})
    assert "unknown language code xx" in recipe_errors(refused.value)


def test_cleaning_reaches_every_message_of_a_preference_pair_and_dedups_whole_pairs() -> None:
    pair = {
        "prompt": [{"role": "user", "content": "<b>Hi</b>"}],
        "chosen": [{"role": "assistant", "content": "Hello <i>there</i>"}],
        "rejected": [{"role": "assistant", "content": "<b>Go</b>"}],
    }
    rows, _ = run([{"step": "strip_html"}, {"step": "exact_dedup"}], [pair, pair], "preference")
    assert rows == [
        {
            "prompt": [{"role": "user", "content": "Hi"}],
            "chosen": [{"role": "assistant", "content": "Hello there"}],
            "rejected": [{"role": "assistant", "content": "Go"}],
        }
    ]
