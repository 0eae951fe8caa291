"""The Healthcare API's wildcard grammar, from the seed page's examples and the reference."""

import fnmatch

import pytest

from handlers.wildcard import (
    PatternSet,
    WildcardError,
    exact_uri,
    narrow_to_prefix,
    parse_gcs_uri,
)


def matches(uri: str, name: str) -> bool:
    pattern = parse_gcs_uri(uri)
    return pattern.matches(pattern.bucket, name)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("DIRECTORY/Example.dcm", True),
        ("DIRECTORY/Example22.dcm", True),
        ("DIRECTORY/Example/22.dcm", False),
        ("DIRECTORY/Other.dcm", False),
        ("OTHER/Example.dcm", False),
    ],
)
def test_star_matches_within_one_folder(name, expected):
    assert matches("gs://bucket/DIRECTORY/Example*.dcm", name) is expected


@pytest.mark.parametrize(
    "name, expected",
    [
        ("DIRECTORY/a.dcm", True),
        ("DIRECTORY/sub/dir/b.dcm", True),
        ("DIRECTORY/.dcm", True),
        ("DIRECTORY/a.dcm.txt", False),
        ("ELSEWHERE/a.dcm", False),
    ],
)
def test_double_star_crosses_folders(name, expected):
    assert matches("gs://bucket/DIRECTORY/**.dcm", name) is expected


@pytest.mark.parametrize(
    "name, expected",
    [
        ("DIRECTORY/Example1.dcm", True),
        ("DIRECTORY/Example.dcm", False),
        ("DIRECTORY/Example01.dcm", False),
        ("DIRECTORY/Example/.dcm", False),
    ],
)
def test_question_mark_is_one_character(name, expected):
    assert matches("gs://bucket/DIRECTORY/Example?.dcm", name) is expected


def test_other_characters_are_literal():
    assert matches("gs://bucket/a+b [1].dcm", "a+b [1].dcm")
    assert not matches("gs://bucket/a.dcm", "abdcm")


def test_curl_example_from_the_seed_page():
    assert matches("gs://bucket/*.dcm", "x.dcm")
    assert not matches("gs://bucket/*.dcm", "folder/x.dcm")


@pytest.mark.parametrize(
    "uri, fragment",
    [
        ("bucket/*.dcm", "not a Cloud Storage URI"),
        ("gs://bucket", "names no object"),
        ("gs://bucket/", "empty"),
        ("gs://buck*et/a.dcm", "wildcards are allowed only in the object part"),
        ("gs://Bad_Bucket/a.dcm", "not a valid bucket name"),
        (f"gs://{'a' * 64}/a.dcm", "not a valid bucket name"),  # undotted: at most 63
        (f"gs://{'a' * 70}.example.com/a.dcm", "not a valid bucket name"),  # dotted: each part at most 63
        ("gs://bucket/**/x.dcm", "must be at the end of the path"),
        ("gs://bucket/DIR/**/*.dcm", "must be the only wildcard"),
        ("gs://bucket/DIR/*/**.dcm", "must be the only wildcard"),
        ("gs://bucket/DIR/**?.dcm", "must be the only wildcard"),
        ("gs://bucket/DIR/***.dcm", "'***'"),
        ("gs://bucket/a\nb", "line break"),
    ],
)
def test_invalid_forms_are_refused_with_the_reason(uri, fragment):
    with pytest.raises(WildcardError) as caught:
        parse_gcs_uri(uri)
    assert fragment in str(caught.value)


def test_a_dotted_bucket_name_may_have_222_characters_in_parts_of_63() -> None:
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 30])
    assert len(name) == 222 and parse_gcs_uri(f"gs://{name}/x.dcm").bucket == name


def test_literal_prefix_stops_at_first_wildcard():
    assert parse_gcs_uri("gs://bkt/studies/2024/*/x?.dcm").literal_prefix == "studies/2024/"
    assert parse_gcs_uri("gs://bkt/a/b.dcm").literal_prefix == "a/b.dcm"


def test_pattern_set_returns_the_first_matching_rule_in_order():
    rules = PatternSet(
        [
            parse_gcs_uri("gs://inbox/urgent/*.dcm"),
            parse_gcs_uri("gs://inbox/**.dcm"),
            parse_gcs_uri("gs://other/**"),
        ]
    )
    assert rules.first_match("inbox", "urgent/a.dcm") == 0
    assert rules.first_match("inbox", "urgent/deeper/a.dcm") == 1
    assert rules.first_match("inbox", "a.txt") is None
    assert rules.first_match("other", "anything/at/all") == 2
    assert rules.first_match("unknown", "a.dcm") is None
    assert rules.buckets == {"inbox", "other"}


def test_pattern_set_agrees_with_single_patterns_on_many_names():
    uris = ["gs://bkt/x/*.dcm", "gs://bkt/x?/*", "gs://bkt/**.dcm", "gs://bkt/*/y/*"]
    patterns = [parse_gcs_uri(u) for u in uris]
    rules = PatternSet(patterns)
    names = ["x/a.dcm", "x1/deep/z", "x1/z", "q/y/w", "a/b/c.dcm", "x/y/z", "nothing", "x/.dcm", "xy/a"]
    for name in names:
        expected = next((i for i, p in enumerate(patterns) if p.matches("bkt", name)), None)
        assert rules.first_match("bkt", name) == expected, name


def test_semantics_differ_from_fnmatch_where_the_api_says_so():
    # fnmatch's '*' crosses '/', the API's does not.
    assert fnmatch.fnmatchcase("DIR/sub/a.dcm", "DIR/*.dcm")
    assert not matches("gs://bkt/DIR/*.dcm", "DIR/sub/a.dcm")


def test_exact_uri_for_plain_and_wildcard_names():
    assert exact_uri("bkt", "dir/a b#1.dcm") == ("gs://bkt/dir/a b#1.dcm", True)
    uri, exact = exact_uri("bkt", "dir/a*b?.dcm")
    assert (uri, exact) == ("gs://bkt/dir/a?b?.dcm", False)
    assert matches(uri, "dir/a*b?.dcm")


@pytest.mark.parametrize(
    "rule, prefix, expected",
    [
        ("gs://bkt/**.dcm", "2024/ct/", "gs://bkt/2024/ct/**.dcm"),
        ("gs://bkt/2024/**.dcm", "", "gs://bkt/2024/**.dcm"),
        ("gs://bkt/2024/ct/**", "2024/", "gs://bkt/2024/ct/**"),
        ("gs://bkt/2024/**", "2023/", None),
        ("gs://bkt/*/*.dcm", "study1/", "gs://bkt/study1/*.dcm"),
        ("gs://bkt/s?/*.dcm", "study1/", None),
        ("gs://bkt/*/*.dcm", "a/b/", None),
        ("gs://bkt/*.dcm", "dir", None),
    ],
)
def test_narrow_to_prefix(rule, prefix, expected):
    narrowed = narrow_to_prefix(parse_gcs_uri(rule), prefix)
    assert (narrowed.uri if narrowed else None) == expected


def test_narrowed_pattern_matches_exactly_the_rule_under_the_prefix():
    rule = parse_gcs_uri("gs://bkt/*/*.dcm")
    narrowed = narrow_to_prefix(rule, "s1/")
    names = ["s1/a.dcm", "s1/x/a.dcm", "s2/a.dcm", "s1/a.txt", "s1/.dcm"]
    for name in names:
        assert narrowed.matches("bkt", name) == (rule.matches("bkt", name) and name.startswith("s1/")), name


def test_pattern_set_agrees_with_a_plain_loop_on_random_rules_and_names():
    import random

    rng = random.Random(1234)
    pieces = ["a", "b", "ab", "a/", "b/", "*", "?", "/", "x.dcm", "*.dcm", "c/"]

    def random_pattern() -> str:
        while True:
            text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 5)))
            if rng.random() < 0.2 and "*" not in text and "?" not in text:
                text = text + "**" + rng.choice(["", ".dcm"])
            try:
                return parse_gcs_uri(f"gs://bkt/{text}").pattern
            except WildcardError:
                continue

    def random_name() -> str:
        return "".join(rng.choice(["a", "b", "/", "c", "x.dcm", ".dcm"]) for _ in range(rng.randint(1, 6)))

    for _ in range(50):
        patterns = [parse_gcs_uri(f"gs://bkt/{random_pattern()}") for _ in range(rng.randint(1, 12))]
        rules = PatternSet(patterns)
        for _ in range(60):
            name = random_name()
            expected = next((i for i, p in enumerate(patterns) if p.matches("bkt", name)), None)
            assert rules.first_match("bkt", name) == expected, (name, [p.pattern for p in patterns])
