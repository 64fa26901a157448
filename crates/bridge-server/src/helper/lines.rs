//! The helper transport's wire: NDJSON lines between the host and `take`/`put`.
//!
//! `take` prints one line per request: `{"id","claimed","file"}` with the file in base64,
//! or `"tooLarge": <size>` / `"unreadable": true` in its place. `put` reads
//! `{"id","file"}` lines and prints `{"id","result"}` with `delivered`, `gone` or `failed`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::{Problem, Put, Taken};

pub fn taken_line(taken: &Taken) -> String {
    taken_value(taken).to_string()
}

/// One taken request as a JSON object (a `take` line, or an item of a session reply).
pub fn taken_value(taken: &Taken) -> Value {
    let mut line = json!({ "id": taken.id, "claimed": taken.previously_claimed });
    match &taken.file {
        Ok(bytes) => line["file"] = STANDARD.encode(bytes).into(),
        Err(Problem::TooLarge { size }) => line["tooLarge"] = (*size).into(),
        Err(Problem::Unreadable) => line["unreadable"] = true.into(),
    }
    line
}

/// Parses a `take` line; `None` for anything malformed (the sandbox is untrusted).
pub fn parse_taken(line: &str) -> Option<Taken> {
    parse_taken_value(&serde_json::from_str(line).ok()?)
}

/// Parses one taken request; `None` for anything malformed.
pub fn parse_taken_value(v: &Value) -> Option<Taken> {
    let id = v["id"].as_str()?.to_owned();
    if !bridge_protocol::layout::is_valid_id(&id) {
        return None;
    }
    let file = if let Some(b64) = v["file"].as_str() {
        STANDARD.decode(b64).map_err(|_| Problem::Unreadable)
    } else if let Some(size) = v["tooLarge"].as_u64() {
        Err(Problem::TooLarge { size })
    } else {
        Err(Problem::Unreadable)
    };
    Some(Taken {
        id,
        file,
        previously_claimed: v["claimed"].as_bool()?,
    })
}

pub fn put_result_line(id: &str, result: Result<Put, String>) -> String {
    put_result_value(id, result).to_string()
}

/// One put result as a JSON object.
pub fn put_result_value(id: &str, result: Result<Put, String>) -> Value {
    match result {
        Ok(Put::Delivered) => json!({ "id": id, "result": "delivered" }),
        Ok(Put::CallerGone) => json!({ "id": id, "result": "gone" }),
        Err(e) => json!({ "id": id, "result": "failed", "error": e }),
    }
}

/// Parses a `put` result line: `(id, Ok(put) | Err(why))`.
pub fn parse_put_result(line: &str) -> Option<(String, Result<Put, String>)> {
    parse_put_result_value(&serde_json::from_str(line).ok()?)
}

/// Parses one put result; `None` for anything malformed.
pub fn parse_put_result_value(v: &Value) -> Option<(String, Result<Put, String>)> {
    let id = v["id"].as_str()?.to_owned();
    let result = match v["result"].as_str()? {
        "delivered" => Ok(Put::Delivered),
        "gone" => Ok(Put::CallerGone),
        _ => Err(v["error"].as_str().unwrap_or("failed").to_owned()),
    };
    Some((id, result))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_lines_round_trip() {
        for file in [
            Ok(vec![0u8, 255, 10]),
            Err(Problem::TooLarge { size: 9 }),
            Err(Problem::Unreadable),
        ] {
            let taken = Taken {
                id: "a-1".into(),
                file,
                previously_claimed: true,
            };
            assert_eq!(parse_taken(&taken_line(&taken)), Some(taken));
        }
        assert_eq!(
            parse_taken(r#"{"id":"../x","claimed":false,"file":""}"#),
            None
        );
        assert_eq!(parse_taken("garbage"), None);
    }

    #[test]
    fn put_results_round_trip() {
        for result in [
            Ok(Put::Delivered),
            Ok(Put::CallerGone),
            Err("disk full".to_owned()),
        ] {
            let line = put_result_line("a", result.clone());
            assert_eq!(parse_put_result(&line), Some(("a".into(), result)));
        }
    }
}
