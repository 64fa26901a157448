//! The host↔sandbox contract between our own two halves: the queue operations the host
//! asks of the gateway binary inside the sandbox (`take`, `put`), what they return, and the
//! session wire that carries them over one long-lived exec.
//!
//! queue_v1 ([`crate::wire`]) is the contract with Paperclip's halves; this one is private
//! to paperclip-bridge, so both sides of it are always the same build (the host uploads the
//! gateway binary by hash). Every line is one JSON object (NDJSON):
//!
//! - one-shot `take` prints one [`Taken`] line per request; one-shot `put` reads
//!   [`PutItem`] lines and prints one [`PutResult`] line per item;
//! - `session` prints [`HELLO`], then reads [`CommandLine`]s and answers each take or put
//!   with a [`ReplyLine`] carrying the same `seq` (replies may come in any order).
//!
//! Whatever the sandbox sends is untrusted: parsing never panics, a reply line is bounded
//! by what its command asked for ([`reply_line_limit`]) and its items by
//! [`MAX_REPLY_ITEMS`], taken items with an invalid id are dropped, and file bytes
//! travel as canonical base64.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::codec;
use crate::layout;

/// The first line a session prints; its number is the session wire's version.
pub const HELLO: &str = r#"{"session":1}"#;

/// Most items one reply carries (a take's requests, a put's results): the gateway stops a
/// batch there, the worker puts no more at once, and the host refuses a reply with more,
/// before it allocates them (a line of tiny items would otherwise cost far more memory
/// than its bytes).
pub const MAX_REPLY_ITEMS: usize = 1024;

/// Bytes one reply item may take beyond its file's base64: the id, the keys, a claim flag,
/// a size, a put's error message.
pub const REPLY_ITEM_BYTES: usize = 1024;

/// Bytes a reply line may take beyond its items: `seq`, the keys, an error reply's message.
pub const REPLY_ENVELOPE_BYTES: usize = 64 * 1024;

/// Longest reply line the host reads for `command`: what it asked for, no more. A take
/// returns at most `max_batch_bytes` of files, or one file of at most `envelope_limit`
/// (their sum bounds both), in base64, plus [`MAX_REPLY_ITEMS`] items' overhead; a put's
/// reply is one short result per item put.
pub fn reply_line_limit(command: &Command) -> usize {
    let items = match command {
        Command::Take(opts) => {
            let files = opts.max_batch_bytes.saturating_add(opts.envelope_limit);
            return base64_len(files)
                .saturating_add(MAX_REPLY_ITEMS.saturating_mul(REPLY_ITEM_BYTES))
                .saturating_add(REPLY_ENVELOPE_BYTES);
        }
        Command::Put(items) => items.len().min(MAX_REPLY_ITEMS),
        Command::Cancel(_) => 0,
    };
    items
        .saturating_mul(REPLY_ITEM_BYTES)
        .saturating_add(REPLY_ENVELOPE_BYTES)
}

/// Length of `n` bytes in padded base64.
fn base64_len(n: usize) -> usize {
    n.div_ceil(3).saturating_mul(4)
}

/// What one take should return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakeOptions {
    /// Wait up to this long inside the sandbox for a request to appear (long poll).
    #[serde(rename = "waitMs", with = "millis")]
    pub wait: Duration,
    /// Stop adding requests to the batch once this many file bytes are in it (a first
    /// request larger than this is still returned, alone, so nothing starves).
    #[serde(rename = "maxBytes")]
    pub max_batch_bytes: usize,
    /// A request file larger than this is returned as [`TakeProblem::TooLarge`] without its
    /// content.
    #[serde(rename = "envelopeBytes")]
    pub envelope_limit: usize,
    /// Also return requests that already carry a claim (only at worker start: recovery).
    #[serde(rename = "includeClaimed", default)]
    pub include_claimed: bool,
}

/// One request file taken (and claimed) from the queue. Its content is untrusted.
///
/// Wire: `{"id","claimed","file"}` with the file in base64, or `"tooLarge": <size>` /
/// `"unreadable": true` in place of `file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "TakenWire", try_from = "TakenWire")]
pub struct Taken {
    /// The file-name stem; always valid by [`layout::is_valid_id`] (else not parsed).
    pub id: String,
    /// The raw file bytes, or why they were not read.
    pub file: Result<Vec<u8>, TakeProblem>,
    /// The request was claimed before this take: an earlier worker may have forwarded it.
    pub previously_claimed: bool,
}

/// Why a request file's bytes were not returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakeProblem {
    /// The file is larger than the envelope limit.
    TooLarge {
        /// The file's size in bytes.
        size: u64,
    },
    /// The file vanished, could not be read, or its bytes did not arrive intact.
    Unreadable,
}

/// One response file to write while its caller waits. Wire: `{"id","file"}` (base64).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutItem {
    /// The request's id.
    pub id: String,
    /// The complete response file (a queue_v1 JSON line).
    #[serde(with = "base64_bytes")]
    pub file: Vec<u8>,
}

/// What became of one response that was put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Written atomically while the request file (the waiting caller) still existed.
    Delivered,
    /// The request file was gone (the caller gave up): nothing was left behind.
    CallerGone,
}

/// The result of one [`PutItem`]. Wire: `{"id","result"}` with `delivered`, `gone`, or
/// `failed` and an `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "PutResultWire", from = "PutResultWire")]
pub struct PutResult {
    /// The request's id (`-` for a put line that could not be read).
    pub id: String,
    /// The delivery, or why the put failed in the sandbox.
    pub result: Result<Delivery, String>,
}

/// A session command. Wire: `{"seq":N,"take":{..}}`, `{"seq":N,"put":[..]}`,
/// `{"cancel":N}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Command {
    /// Wait (bounded) for requests, claim and return them: answered by [`Reply::Taken`].
    Take(TakeOptions),
    /// Write these responses: answered by [`Reply::Put`], one result per item, in order.
    Put(Vec<PutItem>),
    /// Take `N` stops waiting and, having claimed nothing, replies with an empty batch at
    /// once (the host gave up on it). Has no reply of its own.
    Cancel(u64),
}

/// One command line: a command and the sequence number its reply will carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandLine {
    /// Pairs the reply with this command; 0 (omitted) for [`Command::Cancel`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub seq: u64,
    /// What to do.
    #[serde(flatten)]
    pub command: Command,
}

/// A session's answer to one command. Wire: `{"seq":N,"taken":[..]}`,
/// `{"seq":N,"put":[..]}`, `{"seq":N,"error":".."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reply {
    /// The requests a take claimed, oldest first (items with an invalid id are dropped).
    Taken(#[serde(deserialize_with = "valid_taken")] Vec<Taken>),
    /// One result per put item, in order.
    Put(#[serde(deserialize_with = "bounded_results")] Vec<PutResult>),
    /// The command could not be carried out (or read: then `seq` is 0).
    Error(String),
}

/// One reply line. Read by hand (`ReplyLineVisitor`), not through `flatten`, which would
/// buffer a whole reply before any bound on its items could apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplyLine {
    /// The `seq` of the command this answers.
    pub seq: u64,
    /// The answer.
    #[serde(flatten)]
    pub reply: Reply,
}

impl<'de> Deserialize<'de> for ReplyLine {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ReplyLineVisitor)
    }
}

/// Reads `{"seq":N}` plus exactly one of `taken`, `put`, `error`; other keys are ignored.
struct ReplyLineVisitor;

impl<'de> serde::de::Visitor<'de> for ReplyLineVisitor {
    type Value = ReplyLine;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a reply line")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ReplyLine, A::Error> {
        use serde::de::Error as _;
        let (mut seq, mut reply) = (None, None);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let value = match key.as_ref() {
                "seq" => {
                    seq = Some(map.next_value::<u64>()?);
                    continue;
                }
                "taken" => Reply::Taken(map.next_value::<TakenItems>()?.0),
                "put" => Reply::Put(map.next_value::<PutResults>()?.0),
                "error" => Reply::Error(map.next_value()?),
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            if reply.replace(value).is_some() {
                return Err(A::Error::custom("a reply line with more than one reply"));
            }
        }
        Ok(ReplyLine {
            seq: seq.ok_or_else(|| A::Error::missing_field("seq"))?,
            reply: reply.ok_or_else(|| A::Error::custom("a reply line with no reply"))?,
        })
    }
}

/// A reply's taken items (bounded, invalid ones dropped).
struct TakenItems(Vec<Taken>);

impl<'de> Deserialize<'de> for TakenItems {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        valid_taken(deserializer).map(Self)
    }
}

/// A reply's put results (bounded).
struct PutResults(Vec<PutResult>);

impl<'de> Deserialize<'de> for PutResults {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        bounded_results(deserializer).map(Self)
    }
}

/// Why a line could not be read (where, never what: the sandbox's lines are untrusted).
#[derive(Debug, thiserror::Error)]
#[error("not a valid bridge line: {0}")]
pub struct LineError(#[from] crate::wire::JsonProblem);

/// Encodes any line of this contract as JSON text (no newline).
pub fn to_line<T: Serialize>(value: &T) -> String {
    // Every type here serialises to a JSON object without fallible parts.
    serde_json::to_string(value).unwrap_or_default()
}

/// Parses one line of this contract.
pub fn from_line<'a, T: Deserialize<'a>>(line: &'a [u8]) -> Result<T, LineError> {
    serde_json::from_slice(line).map_err(|e| LineError(e.into()))
}

/// Reads a command line: its `seq` (0 if even that is unreadable) and the command or why
/// it cannot be read, so the session can answer the right caller with an error.
pub fn parse_command(line: &[u8]) -> (u64, Result<Command, String>) {
    #[derive(Deserialize)]
    struct SeqOnly {
        #[serde(default)]
        seq: u64,
    }
    let seq = serde_json::from_slice::<SeqOnly>(line).map_or(0, |s| s.seq);
    match from_line::<CommandLine>(line) {
        Ok(parsed) => (parsed.seq, Ok(parsed.command)),
        Err(e) => (seq, Err(format!("unreadable command: {e}"))),
    }
}

/// The wire form of [`Taken`]. The file fields are read leniently: an item with a valid
/// id whose file fields make no sense is [`TakeProblem::Unreadable`], so its caller is
/// answered at once instead of waiting out its time-out.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TakenWire {
    id: String,
    claimed: bool,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    file: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    too_large: Option<u64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient"
    )]
    unreadable: Option<bool>,
}

/// Any JSON value: `Some` if it is a `T`, else `None` (never an error).
fn lenient<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(T::deserialize(value).ok())
}

impl From<Taken> for TakenWire {
    fn from(taken: Taken) -> Self {
        let (file, too_large, unreadable) = match taken.file {
            Ok(bytes) => (Some(codec::encode_base64(&bytes)), None, None),
            Err(TakeProblem::TooLarge { size }) => (None, Some(size), None),
            Err(TakeProblem::Unreadable) => (None, None, Some(true)),
        };
        Self {
            id: taken.id,
            claimed: taken.previously_claimed,
            file,
            too_large,
            unreadable,
        }
    }
}

impl TryFrom<TakenWire> for Taken {
    type Error = String;

    fn try_from(wire: TakenWire) -> Result<Self, String> {
        if !layout::is_valid_id(&wire.id) {
            return Err(format!("invalid request id {:?}", truncate(&wire.id)));
        }
        let file = match (wire.file, wire.too_large) {
            (Some(b64), _) => {
                codec::decode_canonical_base64(&b64).map_err(|_| TakeProblem::Unreadable)
            }
            (None, Some(size)) => Err(TakeProblem::TooLarge { size }),
            (None, None) => Err(TakeProblem::Unreadable),
        };
        Ok(Self {
            id: wire.id,
            file,
            previously_claimed: wire.claimed,
        })
    }
}

/// Taken items, dropping those without a valid id or claim flag (the rest of the batch
/// still counts).
fn valid_taken<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Taken>, D::Error> {
    let items = deserializer.deserialize_seq(Bounded::<serde_json::Value>::new())?;
    Ok(items
        .into_iter()
        .filter_map(|item| Taken::deserialize(item).ok())
        .collect())
}

/// Put results, at most [`MAX_REPLY_ITEMS`].
fn bounded_results<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PutResult>, D::Error> {
    d.deserialize_seq(Bounded::new())
}

/// A JSON array of at most [`MAX_REPLY_ITEMS`] `T`s: one more is an error as soon as it
/// starts, so a reply of countless tiny items allocates no more than the bound.
struct Bounded<T>(std::marker::PhantomData<T>);

impl<T> Bounded<T> {
    fn new() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Bounded<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an array of at most {MAX_REPLY_ITEMS} items")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let mut items = Vec::new();
        loop {
            if items.len() == MAX_REPLY_ITEMS {
                // One more element, even an unreadable one, is over the bound.
                return match seq.next_element::<serde::de::IgnoredAny>()? {
                    None => Ok(items),
                    Some(_) => Err(serde::de::Error::custom(format!(
                        "a reply of more than {MAX_REPLY_ITEMS} items"
                    ))),
                };
            }
            match seq.next_element()? {
                Some(item) => items.push(item),
                None => return Ok(items),
            }
        }
    }
}

/// The wire form of [`PutResult`].
#[derive(Serialize, Deserialize)]
struct PutResultWire {
    id: String,
    result: PutOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum PutOutcome {
    Delivered,
    Gone,
    /// `failed`, or anything else: not delivered.
    #[serde(other)]
    Failed,
}

impl From<PutResult> for PutResultWire {
    fn from(put: PutResult) -> Self {
        let (result, error) = match put.result {
            Ok(Delivery::Delivered) => (PutOutcome::Delivered, None),
            Ok(Delivery::CallerGone) => (PutOutcome::Gone, None),
            Err(why) => (PutOutcome::Failed, Some(why)),
        };
        Self {
            id: put.id,
            result,
            error,
        }
    }
}

impl From<PutResultWire> for PutResult {
    fn from(wire: PutResultWire) -> Self {
        let result = match wire.result {
            PutOutcome::Delivered => Ok(Delivery::Delivered),
            PutOutcome::Gone => Ok(Delivery::CallerGone),
            PutOutcome::Failed => Err(wire.error.unwrap_or_else(|| "failed".into())),
        };
        Self {
            id: wire.id,
            result,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// At most 64 characters of an untrusted string, for error messages.
fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

/// `Duration` as whole milliseconds.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Bytes as canonical padded base64.
mod base64_bytes {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::codec;

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&codec::encode_base64(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        codec::decode_canonical_base64(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests;
