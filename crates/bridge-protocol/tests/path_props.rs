//! Property tests of path and query canonicalisation: whatever is accepted is a fixpoint
//! and is left unchanged by the URL parser the host's HTTP client uses, so the form the
//! allowlist checked is the form that is sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bridge_protocol::canonicalize_path;
use bridge_protocol::path::canonicalize_query;
use proptest::prelude::*;

/// Characters that matter to a URL parser, plus plain ones, so accepted and refused
/// inputs both come up often.
const ALPHABET: &[char] = &[
    'a', 'Z', '0', '-', '.', '_', '~', '!', '$', '&', '\'', '(', ')', '*', '+', ',', ';', '=', ':',
    '@', '%', '2', 'e', 'E', 'f', 'F', 'c', '/', '\\', '?', '#', ' ', '"', '<', '>', '`', '{', '}',
    '|', '^', '[', ']', '\t', '\0', 'ä', '€',
];

fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(ALPHABET), 0..max)
        .prop_map(|chars| chars.into_iter().collect())
}

/// Free text after a `/`, segments of path-ish characters, or anything at all.
fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        text(24).prop_map(|s| format!("/{s}")),
        prop::collection::vec("[a-zA-Z0-9._~%-]{0,6}", 1..6)
            .prop_map(|segments| format!("/{}", segments.join("/"))),
        text(24),
    ]
}

fn url_of(target: &str) -> url::Url {
    url::Url::parse(&format!("http://upstream.test{target}")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn accepted_paths_are_fixpoints_the_url_parser_keeps(raw in path()) {
        if let Ok(canonical) = canonicalize_path(&raw) {
            let again = canonicalize_path(canonical.as_str()).unwrap();
            prop_assert_eq!(&again, &canonical);
            let sent = url_of(canonical.as_str());
            prop_assert_eq!(sent.path(), canonical.as_str());
            for segment in canonical.as_str().split('/').skip(1) {
                prop_assert!(segment != "." && segment != "..");
            }
        }
    }

    #[test]
    fn accepted_queries_are_fixpoints_the_url_parser_keeps(raw in text(24)) {
        let raw = format!("?{raw}");
        if let Ok(canonical) = canonicalize_query(&raw) {
            prop_assert_eq!(canonicalize_query(&canonical).unwrap(), canonical.clone());
            let sent = url_of(&format!("/api{canonical}"));
            let sent = sent.query().map(|q| format!("?{q}")).unwrap_or_default();
            // A lone `?` is an empty query: the same request.
            if canonical != "?" {
                prop_assert_eq!(sent, canonical);
            }
        }
    }

    #[test]
    fn an_encoded_dot_segment_is_never_accepted(
        prefix in "[a-z]{0,4}",
        dots in prop::sample::select(vec![".", "..", "%2e", "%2E", ".%2e", "%2e%2E"]),
    ) {
        let raw = format!("/{prefix}/{dots}/x");
        prop_assert!(canonicalize_path(&raw).is_err());
    }
}
