//! Path and query canonicalisation: an accepted form is a fixpoint, and a URL parser
//! (reqwest's) leaves it unchanged, so what the allowlist checked is what is sent.
#![no_main]

use bridge_protocol::canonicalize_path;
use bridge_protocol::path::canonicalize_query;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (path, query) = match text.find('?') {
        Some(at) => text.split_at(at),
        None => (text, ""),
    };
    let path = canonicalize_path(path).ok();
    let query = canonicalize_query(query).ok();
    if let Some(path) = &path {
        let again = canonicalize_path(path.as_str()).expect("a canonical path is accepted");
        assert_eq!(&again, path, "canonical paths are fixpoints");
        for segment in path.as_str().split('/').skip(1) {
            assert!(segment != "." && segment != "..", "{path}");
        }
    }
    if let Some(query) = &query {
        let again = canonicalize_query(query).expect("a canonical query is accepted");
        assert_eq!(&again, query, "canonical queries are fixpoints");
    }
    let (Some(path), Some(query)) = (path, query) else {
        return;
    };
    let url = url::Url::parse(&format!("http://upstream.test{path}{query}")).expect("parses");
    assert_eq!(url.path(), path.as_str(), "the URL parser rewrote the path");
    let sent_query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
    // `?` alone parses as an empty query: the same request.
    if query != "?" {
        assert_eq!(sent_query, query, "the URL parser rewrote the query");
    }
});
