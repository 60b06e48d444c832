//! The benchmark's numbering of users, lessons and tokens.
//!
//! Pair `i` is mentor `1000+i` (token `bench-m-<id>`, teaching lesson `1000+i`)
//! and student `1000000+i` (token `bench-s-<id>`). Any Django stand-in that
//! follows this scheme serves any generator, with no shared state between them.

/// First mentor id (and first lesson id: lessons are numbered like their teachers).
pub const MENTOR_BASE: i64 = 1000;
/// First student id.
pub const STUDENT_BASE: i64 = 1_000_000;
/// Most pairs one run may use; keeps mentor ids below the student range.
pub const MAX_PAIRS: u64 = 500_000;
/// Lessons below this id do not exist in the scheme.
pub const FIRST_LESSON: i64 = MENTOR_BASE;

/// Which side of a conversation a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Side {
    Mentor,
    Student,
}

pub fn mentor_id(pair: u64) -> i64 {
    MENTOR_BASE + pair as i64
}

pub fn student_id(pair: u64) -> i64 {
    STUDENT_BASE + pair as i64
}

pub fn lesson_id(pair: u64) -> i64 {
    mentor_id(pair)
}

pub fn user_id(pair: u64, side: Side) -> i64 {
    match side {
        Side::Mentor => mentor_id(pair),
        Side::Student => student_id(pair),
    }
}

pub fn token(side: Side, user_id: i64) -> String {
    match side {
        Side::Mentor => format!("bench-m-{user_id}"),
        Side::Student => format!("bench-s-{user_id}"),
    }
}

/// The user a bench token names, or `None` for anything else.
pub fn parse_token(token: &str) -> Option<(Side, i64)> {
    let (side, id) = if let Some(id) = token.strip_prefix("bench-m-") {
        (Side::Mentor, id)
    } else if let Some(id) = token.strip_prefix("bench-s-") {
        (Side::Student, id)
    } else {
        return None;
    };
    // Reject signs, spaces and leading zeros so one user has exactly one token.
    if id.is_empty()
        || !id.bytes().all(|b| b.is_ascii_digit())
        || (id.len() > 1 && id.starts_with('0'))
    {
        return None;
    }
    let id: i64 = id.parse().ok()?;
    (id > 0).then_some((side, id))
}

/// Path and query of the WebSocket URL for one side of pair `pair` (CONTRACT §3).
pub fn ws_path(base_path: &str, pair: u64, side: Side) -> String {
    let lesson = lesson_id(pair);
    match side {
        Side::Mentor => {
            let m = mentor_id(pair);
            let s = student_id(pair);
            format!("{base_path}?token=bench-m-{m}&user_id={m}&lesson_id={lesson}&student_id={s}")
        }
        Side::Student => {
            let s = student_id(pair);
            format!("{base_path}?token=bench-s-{s}&user_id={s}&lesson_id={lesson}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_numbering_follows_the_scheme() {
        assert_eq!(mentor_id(0), 1000);
        assert_eq!(student_id(7), 1_000_007);
        assert_eq!(lesson_id(7), 1007);
        assert_eq!(token(Side::Mentor, 1007), "bench-m-1007");
        assert_eq!(
            ws_path("/ws", 7, Side::Mentor),
            "/ws?token=bench-m-1007&user_id=1007&lesson_id=1007&student_id=1000007"
        );
        assert_eq!(
            ws_path("/ws", 7, Side::Student),
            "/ws?token=bench-s-1000007&user_id=1000007&lesson_id=1007"
        );
        // The largest pair stays below the student range.
        assert!(mentor_id(MAX_PAIRS - 1) < STUDENT_BASE);
    }

    #[test]
    fn tokens_parse_strictly() {
        assert_eq!(parse_token("bench-m-1000"), Some((Side::Mentor, 1000)));
        assert_eq!(
            parse_token("bench-s-1000000"),
            Some((Side::Student, 1_000_000))
        );
        for bad in [
            "bench-m-",
            "bench-m-01",
            "bench-m-+5",
            "bench-x-5",
            "bench-m-0",
            "Bearer bench-m-5",
            "bench-s-5a",
        ] {
            assert_eq!(parse_token(bad), None, "{bad}");
        }
    }
}
