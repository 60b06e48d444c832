//! One linear pass over an inbound frame's raw bytes before simd-json sees
//! them, refusing the two inputs simd-json mishandles:
//!
//! - deep nesting: simd-json validates iteratively, but then builds the
//!   value from its tape recursively (and drops it recursively), so 9,000
//!   nested `[` overflow a runtime thread's stack and abort the process;
//! - unpaired UTF-16 surrogate escapes: simd-json decodes a lone high
//!   surrogate (`"\ud800"`) to U+0000, silently corrupting the text, while
//!   it refuses a lone low one. Both are refused here, as serde_json does.
//!
//! simd-json decodes strings in place, so the check must run on the raw
//! input, before the parse. It tracks strings and escapes exactly as JSON
//! does; on input that is not valid JSON it may see strings differently
//! from simd-json, which is harmless: simd-json refuses such input while
//! validating, before it recurses.

use std::fmt;

/// Deepest nesting of arrays and objects a frame may have. Every event is
/// one object of scalars (depth 1); 16 leaves room for nested extra fields a
/// client may add (ignored), while simd-json's recursion stays at a few KiB
/// of stack, far from the 2 MiB a runtime thread has.
pub(crate) const MAX_DEPTH: usize = 16;

/// Why a frame was refused before parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flaw {
    /// Arrays and objects nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A `\uD800`–`\uDFFF` escape that is not a high surrogate directly
    /// followed by a low one; `at` is the offset of its backslash.
    LoneSurrogate { at: usize },
}

impl fmt::Display for Flaw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Flaw::TooDeep => write!(f, "nested deeper than {MAX_DEPTH} levels"),
            Flaw::LoneSurrogate { at } => {
                write!(f, "unpaired UTF-16 surrogate escape at byte {at}")
            }
        }
    }
}

/// Checks nesting depth and surrogate escapes of `json` in one pass.
pub(crate) fn check(json: &[u8]) -> Result<(), Flaw> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Flaw::TooDeep);
                }
            }
            // Unbalanced input is simd-json's to refuse.
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'"' => i = string_end(json, i + 1)?,
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The offset of the quote closing the string whose body starts at `i`
/// (`json.len()` when unterminated), checking its `\u` escapes on the way.
fn string_end(json: &[u8], mut i: usize) -> Result<usize, Flaw> {
    loop {
        // Most of a frame is string bodies: jump to the next quote or escape.
        let Some(found) = memchr::memchr2(b'"', b'\\', &json[i..]) else {
            return Ok(json.len());
        };
        i += found;
        if json[i] == b'"' {
            return Ok(i);
        }
        if json.get(i + 1) != Some(&b'u') {
            // `\"`, `\\`, `\n`…: the escaped byte cannot end the string.
            i += 2;
        } else {
            match hex4(json, i + 2) {
                Some(0xD800..=0xDBFF) => {
                    let paired = json.get(i + 6) == Some(&b'\\')
                        && json.get(i + 7) == Some(&b'u')
                        && matches!(hex4(json, i + 8), Some(0xDC00..=0xDFFF));
                    if !paired {
                        return Err(Flaw::LoneSurrogate { at: i });
                    }
                    i += 12;
                }
                Some(0xDC00..=0xDFFF) => return Err(Flaw::LoneSurrogate { at: i }),
                Some(_) => i += 6,
                // Not four hex digits: simd-json refuses the escape.
                None => i += 2,
            }
        }
        if i >= json.len() {
            return Ok(json.len());
        }
    }
}

/// The four hex digits at `at`, if there are four.
fn hex4(json: &[u8], at: usize) -> Option<u16> {
    let digits = json.get(at..at + 4)?;
    digits.iter().try_fold(0u16, |unit, &b| {
        let digit = (b as char).to_digit(16)?;
        Some((unit << 4) | digit as u16)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_str(json: &str) -> Result<(), Flaw> {
        check(json.as_bytes())
    }

    #[test]
    fn events_pass() {
        for json in [
            r#"{"type":"message","text":"Hello, mentor!","client_id":"c-1"}"#,
            r#"{"type":"typing","is_typing":true}"#,
            r#"{"type":"viewed","message_id":"663af8129dde123456789def"}"#,
            r#"{"type":"message","text":"a\u0000b \"q\" \\ \ud83d\ude00 \uD83D\uDE00 ש"}"#,
            "",
            "not json",
        ] {
            assert_eq!(check_str(json), Ok(()), "{json}");
        }
    }

    #[test]
    fn nesting_up_to_the_bound_passes_and_one_more_is_refused() {
        let nest = |depth: usize, open: &str, close: &str| {
            format!("{}1{}", open.repeat(depth), close.repeat(depth))
        };
        assert_eq!(check_str(&nest(MAX_DEPTH, "[", "]")), Ok(()));
        assert_eq!(
            check_str(&nest(MAX_DEPTH + 1, "[", "]")),
            Err(Flaw::TooDeep)
        );
        assert_eq!(check_str(&nest(MAX_DEPTH, r#"{"a":"#, "}")), Ok(()));
        assert_eq!(
            check_str(&nest(MAX_DEPTH + 1, r#"{"a":"#, "}")),
            Err(Flaw::TooDeep)
        );
        // Unterminated and huge: refused at the first level too many.
        assert_eq!(check(&vec![b'['; 100_000]), Err(Flaw::TooDeep));
        // Depth, not count: many siblings are fine.
        assert_eq!(check_str(&"[]".repeat(10_000)), Ok(()));
        let wide = format!("{{\"x\":[{}]}}", vec!["[1]"; 1000].join(","));
        assert_eq!(check_str(&wide), Ok(()));
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let text = "[{".repeat(1000);
        assert_eq!(
            check_str(&format!(r#"{{"type":"message","text":"{text}"}}"#)),
            Ok(())
        );
        // An escaped quote does not end the string; an escaped backslash
        // before a quote does.
        let inside = format!(r#"{{"text":"\"{text}"}}"#);
        assert_eq!(check_str(&inside), Ok(()));
        let outside = format!(r#"{{"text":"\\"{}"}}"#, "[".repeat(17));
        assert_eq!(check_str(&outside), Err(Flaw::TooDeep));
    }

    #[test]
    fn unpaired_surrogates_are_refused_anywhere() {
        for (json, at) in [
            (r#"{"text":"ab\ud800"}"#, 11),
            (r#"{"text":"\udc00"}"#, 9),
            (r#"{"text":"\uDBFF x"}"#, 9),
            (r#"{"text":"\ud800\u0041"}"#, 9),
            (r#"{"text":"\ud800\ud800\udc00"}"#, 9),
            (r#"{"text":"\ud83d\ude00\ude00"}"#, 21),
            (r#"{"text":"\ud800\n"}"#, 9),
            (r#"{"text":"\ud800"#, 9),
            (r#"{"client_id":"\udfff"}"#, 14),
            (r#"{"\ud800":1}"#, 2),
            (r#"["\ud800"]"#, 2),
        ] {
            assert_eq!(check_str(json), Err(Flaw::LoneSurrogate { at }), "{json}");
        }
    }

    #[test]
    fn escaped_backslashes_are_not_escapes() {
        // `\\ud800` is a backslash and the letters "ud800".
        assert_eq!(check_str(r#"{"text":"\\ud800"}"#), Ok(()));
        assert_eq!(
            check_str(r#"{"text":"\\\ud800"}"#),
            Err(Flaw::LoneSurrogate { at: 11 })
        );
    }

    #[test]
    fn malformed_escapes_are_left_to_the_parser() {
        for json in [
            r#"{"t":"\u12"}"#,
            r#"{"t":"\uzzzz"}"#,
            r#"{"t":"\"#,
            r#""\u"#,
        ] {
            assert_eq!(check_str(json), Ok(()), "{json}");
        }
    }

    #[test]
    fn flaws_read_as_messages() {
        assert_eq!(Flaw::TooDeep.to_string(), "nested deeper than 16 levels");
        assert_eq!(
            Flaw::LoneSurrogate { at: 3 }.to_string(),
            "unpaired UTF-16 surrogate escape at byte 3"
        );
    }
}
