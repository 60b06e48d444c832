//! Query-string parsing: `application/x-www-form-urlencoded` pairs, and ids.

use super::error::ApiError;
use crate::model::{ObjectId, Seq};

/// Decoded `name=value` pairs, in order.
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    /// `+` is a space, a `%` not followed by two hex digits stays as it is,
    /// and bytes that decode to invalid UTF-8 become U+FFFD.
    pub(crate) fn parse(raw: Option<&str>) -> Query {
        let raw = raw.unwrap_or_default().as_bytes();
        Query(form_urlencoded::parse(raw).into_owned().collect())
    }

    /// The first value of `name`, if present and not empty.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// A positive integer id, if present; 400 if present and malformed.
    pub(crate) fn id(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.get(name)
            .map(|value| {
                parse_positive_id(value).ok_or_else(|| {
                    ApiError::bad_request(format!("{name} must be a positive integer"))
                })
            })
            .transpose()
    }

    /// A `seq` (a non-negative integer), if present; 400 if present and
    /// malformed.
    pub(crate) fn seq(&self, name: &str) -> Result<Option<Seq>, ApiError> {
        self.get(name)
            .map(|value| {
                parse_seq(value).ok_or_else(|| {
                    ApiError::bad_request(format!("{name} must be a non-negative integer"))
                })
            })
            .transpose()
    }

    /// An ObjectId, if present; 400 if present and malformed.
    pub(crate) fn object_id(&self, name: &str) -> Result<Option<ObjectId>, ApiError> {
        self.get(name)
            .map(|value| {
                ObjectId::parse(value).ok_or_else(|| {
                    ApiError::bad_request(format!("{name} must be a 24-hex-digit id"))
                })
            })
            .transpose()
    }
}

/// A non-negative decimal integer that fits a seq; `None` otherwise.
fn parse_seq(text: &str) -> Option<Seq> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<Seq>()
        .ok()
        .filter(|&seq| i64::try_from(seq).is_ok())
}

/// A positive decimal integer (what Django ids are); `None` otherwise.
pub(crate) fn parse_positive_id(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i64>().ok().filter(|id| *id > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_pairs() {
        let q = Query::parse(Some("token=a%2Eb+c&user_id=10&empty=&flag&user_id=11"));
        assert_eq!(q.get("token"), Some("a.b c"));
        assert_eq!(q.get("user_id"), Some("10"), "the first value wins");
        assert_eq!(q.get("empty"), None);
        assert_eq!(q.get("flag"), None);
        assert_eq!(q.get("missing"), None);
        assert_eq!(Query::parse(Some("x=%zz%4")).get("x"), Some("%zz%4"));
        assert_eq!(Query::parse(None).get("x"), None);
    }

    /// What the hand-written decoder did, pinned now that form_urlencoded does it.
    #[test]
    fn decoding_edge_cases() {
        let cases = [
            ("x=%2B+%2b", "+ +"),
            ("x=%41%4a%4A", "AJJ"),
            ("x=a=b", "a=b"),
            ("x=%", "%"),
            ("x=%4", "%4"),
            ("x=%%41", "%A"),
            ("x=%+4", "% 4"),
            ("x=%ff%fe", "\u{fffd}\u{fffd}"),
            ("x=%C3%A9", "\u{e9}"),
            ("x=%26y%3D1&y=2", "&y=1"),
        ];
        for (raw, want) in cases {
            assert_eq!(Query::parse(Some(raw)).get("x"), Some(want), "{raw:?}");
        }
        let q = Query::parse(Some("&&%74oken=t&&user+id=3"));
        assert_eq!(q.get("token"), Some("t"), "names are decoded too");
        assert_eq!(q.get("user id"), Some("3"));
        assert_eq!(q.get("y"), None);
    }

    #[test]
    fn ids_must_be_positive_integers() {
        assert_eq!(parse_positive_id("10"), Some(10));
        for bad in [
            "0",
            "-1",
            "+1",
            "1.0",
            "abc",
            "",
            " 1",
            "99999999999999999999",
        ] {
            assert_eq!(parse_positive_id(bad), None, "{bad:?}");
        }
        let q = Query::parse(Some("a=5&b=x"));
        assert_eq!(q.id("a").unwrap(), Some(5));
        assert!(q.id("b").is_err());
        assert_eq!(q.id("c").unwrap(), None);
    }
}
