//! Showing untrusted text (anything that came from the sandbox: a request's method, path or
//! id, a session's stderr, an error message quoting them) in a log line: bounded, and with
//! every control or invisible character escaped, so a forged value can neither flood the
//! log nor forge a line, a colour or a cursor move in it.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// Characters of one untrusted value a log line shows; the rest is cut, saying how much.
pub const SHOWN_CHARS: usize = 200;

/// Characters of an untrusted error message (it may quote a session's stderr) a log line
/// shows: more room than a single value, still bounded.
pub const SHOWN_ERROR_CHARS: usize = 1000;

/// `text` for a log line: at most [`SHOWN_CHARS`] characters, escaped.
pub fn shown(text: &str) -> Shown<'_> {
    Shown::new(text, SHOWN_CHARS)
}

/// An error's message for a log line: at most [`SHOWN_ERROR_CHARS`] characters, escaped.
pub fn shown_error(error: &dyn fmt::Display) -> Shown<'static> {
    // Formatted into a bounded buffer: a huge message is never copied whole.
    let mut kept = Kept {
        text: String::new(),
        chars: 0,
        limit: SHOWN_ERROR_CHARS,
        cut: 0,
    };
    let _ = write!(kept, "{error}");
    Shown {
        text: Cow::Owned(kept.text),
        limit: SHOWN_ERROR_CHARS,
        cut: kept.cut,
    }
}

/// Keeps the first `limit` characters written to it and counts the bytes after them.
struct Kept {
    text: String,
    chars: usize,
    limit: usize,
    cut: usize,
}

impl fmt::Write for Kept {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let (kept, cut) = split(s, self.limit - self.chars);
        self.text.push_str(kept);
        self.chars += kept.chars().count();
        self.cut += cut;
        Ok(())
    }
}

/// Untrusted text as a log line may show it ([`Display`](fmt::Display)): the first `limit`
/// characters, control and invisible ones escaped (`\n`, `\r`, `\t`, `\\`, else `\u{..}`),
/// then `…(N more bytes)` if anything was cut.
#[derive(Debug, Clone)]
pub struct Shown<'a> {
    text: Cow<'a, str>,
    limit: usize,
    /// Bytes already cut before `text` was kept.
    cut: usize,
}

impl<'a> Shown<'a> {
    /// Shows at most `limit` characters of `text`.
    pub fn new(text: &'a str, limit: usize) -> Self {
        Self {
            text: Cow::Borrowed(text),
            limit,
            cut: 0,
        }
    }
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kept, cut) = split(&self.text, self.limit);
        let cut = cut + self.cut;
        for c in kept.chars() {
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                // Escaped itself, so an escape in the output is never the sender's text.
                '\\' => f.write_str("\\\\")?,
                c if is_hidden(c) => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        if cut > 0 {
            write!(f, "…({cut} more bytes)")?;
        }
        Ok(())
    }
}

/// At most `limit` characters of `text`, with `…(N more bytes)` if anything was cut; no
/// escaping (for writers that escape themselves, such as JSON).
pub fn clipped(text: &str, limit: usize) -> Cow<'_, str> {
    match split(text, limit) {
        (kept, 0) => Cow::Borrowed(kept),
        (kept, cut) => Cow::Owned(format!("{kept}…({cut} more bytes)")),
    }
}

/// The first `limit` characters of `text` and how many bytes follow them.
fn split(text: &str, limit: usize) -> (&str, usize) {
    let end = text
        .char_indices()
        .nth(limit)
        .map_or(text.len(), |(at, _)| at);
    (&text[..end], text.len() - end)
}

/// Control characters (C0, DEL, C1) and the invisible ones that reorder or break lines on
/// a terminal or in a viewer (line and paragraph separators, bidirectional overrides,
/// zero-width characters, the byte-order mark).
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_so_no_line_can_be_forged() {
        let forged = "/api/x\r\n2026-01-01T00:00:00Z  INFO fake\x1b[2K\u{85}\u{2028}\u{202e}\\n";
        let text = shown(forged).to_string();
        assert_eq!(
            text,
            "/api/x\\r\\n2026-01-01T00:00:00Z  INFO fake\\u{1b}[2K\\u{85}\\u{2028}\\u{202e}\\\\n"
        );
        assert!(!text.chars().any(is_hidden));
    }

    #[test]
    fn long_text_is_cut_at_the_bound_saying_how_much() {
        let long = "é".repeat(SHOWN_CHARS + 10);
        let text = shown(&long).to_string();
        assert!(text.starts_with(&"é".repeat(SHOWN_CHARS)));
        assert!(text.ends_with("…(20 more bytes)"), "{text}");
        assert_eq!(shown("short").to_string(), "short");
        assert_eq!(clipped("abcdef", 3), "abc…(3 more bytes)");
        assert_eq!(clipped("abc", 3), "abc");
    }

    #[test]
    fn a_huge_value_costs_only_the_bound() {
        let huge = "\n".repeat(20 << 20);
        assert!(shown(&huge).to_string().len() <= SHOWN_CHARS * 2 + 32);
        let error = std::io::Error::other(huge);
        assert!(shown_error(&error).to_string().len() <= SHOWN_ERROR_CHARS * 2 + 32);
    }
}
